"""Backing off the micro-batch when a training step runs out of memory.

The planner picks a micro-batch from measured memory, but other programs, fragmentation or a
longer compilation can still exhaust it: rather than lose the run, the step is retried with
a smaller micro-batch, keeping the effective batch and so the schedule.
"""

from __future__ import annotations

import numpy as np

from localtrain import events as ev
from localtrain.backends.base import OutOfMemory, StepResult
from localtrain.errors import LocaltrainError
from localtrain.batch import next_smaller_micro

class Backoff:
    """The OOM-safe step of a Trainer (the method takes the trainer as `self`)."""

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> StepResult:
        """One optimizer step over the batch (x, y), backing off the micro-batch on OOM.

        An out-of-memory step is retried on the same sequences with half the micro-batch
        and twice the accumulation: the effective batch and the schedule do not change.
        """
        while True:
            m = self.micro_batch_size
            micro = [(x[i : i + m], y[i : i + m]) for i in range(0, len(x), m)]
            try:
                return self.backend.train_step(micro, lr)
            except OutOfMemory as exc:
                smaller = next_smaller_micro(len(x), m)
                if self.dist.world_size > 1:
                    # One rank cannot back off alone: the others would wait for its gradients.
                    raise LocaltrainError(
                        f"Out of memory on rank {self.dist.rank} at step {self.state.step + 1} with"
                        f" micro-batch {m} ({exc}). Resume with a smaller one, e.g. --resume --set"
                        f" train.micro_batch_size={smaller or 1}."
                    ) from None
                if smaller is None:
                    raise LocaltrainError(
                        f"Out of memory at step {self.state.step + 1} even with one sequence per"
                        f" micro-batch ({exc}). Lower model.seq_len, model.n_embd or data.vocab_size,"
                        " or free memory used by other programs."
                    ) from None
                self.micro_batch_size, self.grad_accum_steps = smaller, len(x) // smaller
                self.emit(ev.Warning(
                    code="oom_backoff",
                    message=f"Out of memory at step {self.state.step + 1} with micro-batch {m}: retrying"
                    f" with micro-batch {smaller} x {self.grad_accum_steps} accumulation steps (the"
                    f" same {len(x)} sequences per step).",
                ))
