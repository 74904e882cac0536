"""What the training loop holds and is given: its data, its state, and the ways to stop it.

These are plain records: the trainer (`localtrain.train`) fills and reads them, the runner
builds `TrainData` and `StopFlag`, and a checkpoint's state.json becomes a `LoopState` again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from localtrain.data.loader import Cursor
from localtrain.errors import LocaltrainError


@dataclass
class TrainData:
    """What the loop needs of the prepared corpus and its tokenizer."""

    train_tokens: Any
    """The training tokens: an array, or the `Phases` of a preparation that may still be running."""
    val_tokens: np.ndarray
    token_bytes: np.ndarray
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    eos_id: int
    tokenizer_sha256: str
    vocab_size: int


@dataclass
class StopFlag:
    """Set by a signal handler (or a controller); the loop stops after the current step."""

    requested: bool = False
    reason: str = "interrupted"

    def request(self, reason: str = "interrupted") -> None:
        self.requested, self.reason = True, reason


Control = Callable[[], list[str]]
"""Returns the commands a controller sent since the last call: "pause", "resume",
"sample", "checkpoint" or "stop". The loop calls it between steps."""


@dataclass
class LoopState:
    """Where the loop stands: what a checkpoint saves and a resume restores."""

    step: int = 0
    tokens: int = 0
    cursor: Cursor = (0, 0)
    elapsed_s: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    best_metric: float | None = None
    """The best value of train.best_metric so far (best_val_loss is the val loss at that eval)."""
    last_checkpoint_step: int | None = None


class TrainingDiverged(LocaltrainError):
    exit_code = 1


def restored_state(s: dict[str, Any], best_metric: str) -> LoopState:
    """The loop's state from a checkpoint's state.json; the best figure is kept only when it is
    of the `best_metric` this run ranks by."""
    return LoopState(
        step=int(s["step"]),
        tokens=int(s["tokens"]),
        cursor=(int(s["cursor"][0]), int(s["cursor"][1])),
        elapsed_s=float(s["elapsed_s"]),
        best_val_loss=s.get("best_val_loss"),
        best_step=s.get("best_step"),
        evals_since_best=int(s.get("evals_since_best", 0)),
        last_checkpoint_step=int(s["step"]),
        best_metric=s.get("best_metric", s.get("best_val_loss"))
        if s.get("best_metric_name", "val_loss") == best_metric else None,
    )
