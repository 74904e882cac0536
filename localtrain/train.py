"""The training loop: schedule, accumulation, evaluation, samples, checkpoints, stopping.

It imports no framework. It drives a backend through `localtrain.backends.base.Backend`
and reports everything as events; it never prints. The learning-rate schedule and the ETA
are in `localtrain.schedule`, the loop's records in `localtrain.loopstate`, evaluation and
live samples in `localtrain.loopeval`, the out-of-memory back-off in `localtrain.oom`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from localtrain import checkpoint, events as ev, metrics
from localtrain.backends.base import Backend
from localtrain.config import Config
from localtrain.data.loader import POLL_SECONDS, TrainWindows, eval_windows
from localtrain.loopeval import Evaluation
from localtrain.loopstate import Control, LoopState, StopFlag, TrainData, TrainingDiverged, restored_state
from localtrain.oom import Backoff
from localtrain.parallel import Dist, Single
from localtrain.plan import RunPlan
from localtrain.schedule import Clock, Eta, lr_at

WAIT = "waiting"
"""What `_agree` returns while the next batch's data is not prepared yet."""


@dataclass
class _Timing:
    """The wall clock of one `run`: time paused or waiting for data is not training time."""

    started: float
    base_elapsed: float
    """The training time of the run before this process (a resumed run's)."""
    deadline: float | None
    waiting_since: float | None = None
    tok_s_avg: float | None = None

    def shift(self, seconds: float) -> None:
        self.started += seconds
        if self.deadline is not None:
            self.deadline += seconds


class Trainer(Evaluation, Backoff):
    """Trains `backend` on `data` as `plan` says, reporting through `emit`; never prints.

    `run` goes from the state's step to the plan's total steps (or until stopped), with
    evaluations, live samples and checkpoints where the train config puts them.
    """

    def __init__(
        self,
        config: Config,
        backend: Backend,
        data: TrainData,
        run_dir: Path,
        emit: ev.Emit,
        plan: RunPlan,
        peak_flops: float,
        stop: StopFlag | None = None,
        control: Control | None = None,
        dist: Dist | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.config, self.backend, self.data = config, backend, data
        self.run_dir, self.emit, self.peak_flops = run_dir, emit, peak_flops
        self.stop = stop or StopFlag()
        self.control = control
        self.dist: Dist = dist or Single()
        self.clock = clock
        self.checkpoint_requested = False
        self.sample_seed: int | None = None
        """The seed of a sample asked for, until every rank of a sharded run takes it together."""
        self.early_stop = False
        # A sharded backend needs every rank in each forward and state gather: all ranks
        # then evaluate, sample and gather for checkpoints, and rank 0 alone writes.
        self.every_rank = bool(getattr(backend, "sharded", False)) and self.dist.world_size > 1
        t = config.train
        self.plan = plan
        # The micro-batch is the plan's until an out-of-memory step backs it off.
        self.micro_batch_size, self.grad_accum_steps = plan.micro_batch_size, plan.grad_accum_steps
        self.windows = TrainWindows(data.train_tokens, config.model.seq_len, t.seed, config.data.phase_epochs)
        self.val_batches = eval_windows(data.val_tokens, config.model.seq_len, t.eval_batches, self.micro_batch_size)
        self.state = LoopState()
        self.eta = Eta(t, plan.total_steps)

    # -- state ---------------------------------------------------------------------------

    def restore(self, loaded: checkpoint.Loaded) -> None:
        s = loaded.state
        self.backend.load_state_arrays(loaded.weights, loaded.moments, int(s["optimizer_step"]))
        ranks = s.get("rng_ranks")
        if ranks and len(ranks) == self.dist.world_size:
            self.backend.set_rng_state(ranks[self.dist.rank])
        else:
            # A new world size: every rank continues from rank 0's generators.
            self.backend.set_rng_state(s["rng"])
        self.backend.set_extra_state(s.get("backend", {}).get("extra", {}))
        self.state = restored_state(s, self.config.train.best_metric)
        # A micro-batch that had to back off from an OOM stays backed off.
        saved = int(s.get("micro_batch_size", self.micro_batch_size))
        if saved < self.micro_batch_size:
            self.micro_batch_size = saved
            self.grad_accum_steps = self.plan.rank_batch // saved

    def checkpoint_state(self) -> dict[str, Any]:
        st, b = self.state, self.backend
        return {
            "step": st.step,
            "tokens": st.tokens,
            "cursor": list(st.cursor),
            "elapsed_s": st.elapsed_s,
            "best_val_loss": st.best_val_loss,
            "best_step": st.best_step,
            "evals_since_best": st.evals_since_best,
            "best_metric": st.best_metric,
            "best_metric_name": self.config.train.best_metric,
            "optimizer_step": st.step,
            "micro_batch_size": self.micro_batch_size,
            # What the planner chose (a micro-batch backed off after an OOM as it is now):
            # a resumed run keeps these unless the user sets them.
            "plan": {"backend": b.name, "dtype": b.dtype, "compile": b.compile, "micro_batch_size": self.micro_batch_size,
                     "activation_checkpointing": self.plan.activation_checkpointing,
                     "parallel": self.plan.parallel, "world_size": self.dist.world_size,
                     "sample_dtype": self.plan.sample_dtype},
            "world_size": self.dist.world_size,
            "data_split": "each step takes the next batch_size windows from the cursor; rank r trains on"
            " windows [r * batch_size / world_size, (r + 1) * batch_size / world_size) of them",
            "rng": b.rng_state(),
            "backend": {"name": b.name, "device": b.device, "dtype": b.dtype, "extra": b.extra_state()},
            "schedule": {
                "lr": lr_at(st.step, self.config.train, self.plan.total_steps),
                "warmup_steps": self.config.train.warmup_steps,
                "total_steps": self.plan.total_steps,
                "min_lr_ratio": self.config.train.min_lr_ratio,
            },
            "seed": self.config.train.seed,
            "config_fingerprint": self.config.fingerprint(),
            "config": self.config.to_dict(),  # a resume names the keys config.toml changed since
            "model_fingerprint": self.config.model_fingerprint(),
            "tokenizer_sha256": self.data.tokenizer_sha256,
            "vocab_size": self.data.vocab_size,
        }

    def save_checkpoint(self, reason: str) -> None:
        """Every rank calls this at the same step; rank 0 writes, with every rank's RNG state."""
        start = self.clock()
        rngs = self.dist.gather_text(json.dumps(self.backend.rng_state()))
        self.state.last_checkpoint_step = self.state.step
        if not (self.dist.is_main or self.every_rank):
            return
        weights, moments = self.backend.state_arrays()
        if not self.dist.is_main:
            return
        state = self.checkpoint_state()
        if self.dist.world_size > 1:
            state["rng_ranks"] = [json.loads(r) for r in rngs]
        path, size = checkpoint.save(
            self.run_dir, self.state.step, weights, moments, state, self.config.train.keep_checkpoints,
        )
        self.emit(ev.Checkpoint(step=self.state.step, path=str(path), reason=reason, bytes=size,
                                seconds=self.clock() - start))

    # -- control -------------------------------------------------------------------------

    def obey_controller(self) -> float:
        """Carry out the controller's commands; returns the seconds spent paused."""
        if self.control is None:
            return 0.0
        paused_at: float | None = None
        while True:
            for command in self.control():
                if command == "sample":
                    seed = secrets.randbelow(2**31)  # fresh: a sample asked for shows new text
                    if self.every_rank:
                        self.sample_seed = seed  # taken at the next agreement, by every rank alike
                    else:
                        self.sample(seed)
                elif command == "checkpoint":
                    if self.dist.world_size == 1:
                        if self.state.last_checkpoint_step != self.state.step:
                            self.save_checkpoint("requested")  # at once, also while paused
                    else:
                        # Taken at the next agreement, so that every rank joins in.
                        self.checkpoint_requested = True
                elif command == "stop":
                    self.stop.request("interrupted")
                elif command == "pause" and paused_at is None:
                    paused_at = self.clock()
                    self.emit(ev.Status(state="paused", message=f"Paused after step {self.state.step}."))
                elif command == "resume" and paused_at is not None:
                    self.emit(ev.Status(state="running", message=f"Continuing from step {self.state.step}."))
                    return self.clock() - paused_at
            if paused_at is None:
                return 0.0
            if self.stop.requested:
                return self.clock() - paused_at
            time.sleep(0.1)

    # -- the loop ------------------------------------------------------------------------

    def _timed(self, kind: str, work: Callable[[], Any]) -> None:
        start = self.clock()
        work()
        self.eta.worked(kind, self.clock() - start)

    def run(self) -> ev.Done:
        t, st = self.config.train, self.state
        started = self.clock()
        timing = _Timing(started, st.elapsed_s, started + t.max_time * 60 if t.max_time else None)
        self.emit(ev.Status(state="running", message=f"Training from step {st.step} to {self.plan.total_steps}."))
        evaluates = self.dist.is_main or self.every_rank
        if st.step == 0 and t.eval_every and evaluates:
            self._timed("eval", self.evaluate)
        reason = "complete"
        while st.step < self.plan.total_steps:
            stop = self._agree(timing)
            if stop == WAIT:
                continue
            if stop is not None:
                reason = stop
                break
            self._step(timing)
            self._periodic_work(evaluates)
        return self._finish(timing, reason)

    def _agree(self, timing: _Timing) -> str | None:
        """Obey the controller, then take with every rank the decisions due before the next step:
        a stop reason, WAIT while the data is not ready, or None to train on."""
        t, st = self.config.train, self.state
        paused_s = self.obey_controller()
        timing.shift(paused_s)
        if paused_s and timing.waiting_since is not None:
            timing.waiting_since = None  # still waiting after a pause: say so again
        missing = self.windows.missing_phase(st.cursor, t.batch_size)
        # Every rank takes the same decisions at the same step: any rank's signal, the
        # clock, rank 0's early stop, its controller's checkpoint request, and any
        # rank's wait for data not prepared yet.
        stop, over_time, early, wanted, waiting, sample = self.dist.all_max([
            float(self.stop.requested), float(timing.deadline is not None and self.clock() >= timing.deadline),
            float(self.early_stop), float(self.checkpoint_requested), float(missing is not None),
            float(-1 if self.sample_seed is None else self.sample_seed),
        ])
        if sample >= 0:
            self.sample_seed = None
            self.sample(int(sample))
        if wanted:
            self.checkpoint_requested = False
            if st.last_checkpoint_step != st.step:
                self.save_checkpoint("requested")
        if stop:
            self.emit(ev.Warning(message=f"Stop requested: checkpointing at step {st.step} and"
                                 " exiting.", code="stopping"))
            return self.stop.reason
        if over_time:
            return "max_time"
        if early:
            return "early_stop"
        if waiting:
            self._wait_for_data(timing, missing)
            return WAIT
        if timing.waiting_since is not None:
            self._data_ready(timing)
        return None

    def _wait_for_data(self, timing: _Timing, missing: Any) -> None:
        # Like a pause, time spent waiting for the data is not training time.
        if timing.waiting_since is None:
            timing.waiting_since = self.clock()
            self.emit(ev.Status(state="waiting", message=self.windows.phases.describe(missing)
                                if missing is not None else "Waiting for another process's data."))
        time.sleep(POLL_SECONDS)

    def _data_ready(self, timing: _Timing) -> None:
        waited = self.clock() - timing.waiting_since
        timing.shift(waited)
        timing.waiting_since = None
        self.emit(ev.Status(state="running", message=f"The data is ready after {waited:.0f} s of waiting; "
                            f"training continues from step {self.state.step}."))

    def _step(self, timing: _Timing) -> None:
        """One training step: the next batch, the update, and its Step event."""
        t, st, clock = self.config.train, self.state, self.clock
        lr = lr_at(st.step, t, self.plan.total_steps)
        taking = clock()
        x, y, cursor = self.windows.take(st.cursor, t.batch_size)
        # Each rank trains on its share of every batch: batch_size / world_size sequences.
        mine = slice(self.dist.rank * self.plan.rank_batch, (self.dist.rank + 1) * self.plan.rank_batch)
        step_start = clock()
        result = self.train_step(x[mine], y[mine], lr)
        if self.dist.world_size > 1:
            result = dataclasses.replace(result, loss=self.dist.all_mean([result.loss])[0])
        now = clock()
        step_time = now - step_start
        self.eta.stepped(now - taking)
        if not math.isfinite(result.loss):
            self._diverged(result.loss, lr)
        st.step += 1
        st.tokens += self.plan.tokens_per_step
        st.cursor = cursor
        st.elapsed_s = timing.base_elapsed + (now - timing.started)
        tok_s = self.plan.tokens_per_step / step_time
        timing.tok_s_avg = tok_s if timing.tok_s_avg is None else 0.9 * timing.tok_s_avg + 0.1 * tok_s
        self.emit(ev.Step(
            step=st.step, total_steps=self.plan.total_steps, loss=result.loss, lr=lr,
            grad_norm=result.grad_norm, tokens=st.tokens, tokens_per_s=timing.tok_s_avg,
            mfu=metrics.mfu(self.plan.flops_per_token, timing.tok_s_avg, self.peak_flops),
            step_time_s=step_time, elapsed_s=st.elapsed_s,
            eta_s=self.eta.seconds_left(st.step), memory_bytes=self.backend.memory_bytes(),
        ))

    def _diverged(self, loss: float, lr: float) -> None:
        st, t = self.state, self.config.train
        self.emit(ev.Error(message=f"The loss became {loss} at step {st.step + 1}."))
        raise TrainingDiverged(
            f"Training diverged: the loss became {loss} at step {st.step + 1} (learning"
            f" rate {lr:.3g}). Nothing after step {st.last_checkpoint_step or 0} was saved."
            " Resume from the last checkpoint with a lower peak rate, e.g. --resume --set"
            f" train.lr={t.lr / 3:.2g}, or with more warmup steps."
        )

    def _periodic_work(self, evaluates: bool) -> None:
        """The evaluation, live samples and checkpoint due after the step just taken."""
        t, st = self.config.train, self.state
        last = st.step == self.plan.total_steps
        if t.eval_every and (st.step % t.eval_every == 0 or last) and evaluates:
            self._timed("eval", self.evaluate)
        if t.sample_every and st.step % t.sample_every == 0 and evaluates:
            self._timed("sample", self.sample)
        if t.checkpoint_every and st.step % t.checkpoint_every == 0:
            self._timed("checkpoint", lambda: self.save_checkpoint("periodic"))
        if t.early_stop_patience and st.evals_since_best >= t.early_stop_patience:
            self.early_stop = True

    def _finish(self, timing: _Timing, reason: str) -> ev.Done:
        st = self.state
        st.elapsed_s = timing.base_elapsed + (self.clock() - timing.started)
        if st.last_checkpoint_step != st.step:
            self.save_checkpoint("interrupt" if reason == "interrupted" else "final")
        path = self.run_dir / "checkpoints" / checkpoint.step_dir_name(st.step)
        done = ev.Done(reason=reason, step=st.step, tokens=st.tokens, elapsed_s=st.elapsed_s,
                       best_val_loss=st.best_val_loss, checkpoint=str(path))
        self.emit(done)
        return done
