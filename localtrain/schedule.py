"""The schedule of a run: the learning rate at each step, and the seconds the run still needs.

Both are pure arithmetic over the train config and the step: the loop, the console and the
dashboard all read them from here.
"""

from __future__ import annotations

import collections
import math
from typing import Callable

from localtrain.config import TrainConfig


def lr_at(step: int, train: TrainConfig, total_steps: int) -> float:
    """Learning rate for the update that follows `step` completed updates."""
    peak = train.lr
    floor = peak * train.min_lr_ratio
    # 1) linear warmup
    if step < train.warmup_steps:
        return peak * (step + 1) / (train.warmup_steps + 1)
    # 2) past the end of the schedule, stay at the floor
    if step >= total_steps:
        return floor
    # 3) cosine from peak down to the floor
    ratio = (step - train.warmup_steps) / max(1, total_steps - train.warmup_steps)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)


Clock = Callable[[], float]
"""Seconds on a monotonic clock (time.perf_counter); tests drive the loop with a clock of their own."""
ETA_WINDOW = 50
"""Training steps whose wall time the ETA averages: the opening steps (compilation, warm caches)
leave it after this many."""
ETA_WORK_KEPT = 3
"""Durations of each kind of periodic work (evaluation, samples, checkpoint) the ETA averages."""


def occurrences(every: int, after: int, last: int, at_end: bool) -> int:
    """How many steps s with after < s <= last hold work done every `every` steps (0: never),
    counting `last` itself when `at_end` (the work that also closes a run)."""
    if after >= last:
        return 0
    regular = last // every - after // every if every else 0
    return regular + (1 if at_end and (not every or last % every) else 0)


class Eta:
    """The seconds a run still needs: one rule for the console, the dashboard and every reader.

    It is the mean wall time of the last ETA_WINDOW training steps times the steps left,
    plus each kind of periodic work (evaluation, live samples, checkpoints) at the mean of
    its latest durations times the times it still comes round. A slow opening leaves the
    figure once it leaves the window, and the work between steps is counted where it falls.
    """

    def __init__(self, train: TrainConfig, total_steps: int) -> None:
        self.train, self.total_steps = train, total_steps
        self.step_s: collections.deque[float] = collections.deque(maxlen=ETA_WINDOW)
        self.opening: float | None = None
        """The first step of this process, which warms up (allocations, compilation): used alone
        only until another step is timed."""
        self.work_s: dict[str, collections.deque[float]] = {}

    def stepped(self, seconds: float) -> None:
        """One training step took `seconds` of wall time (data, forward, backward, update)."""
        if self.opening is None:
            self.opening = seconds
        else:
            self.step_s.append(seconds)

    def worked(self, kind: str, seconds: float) -> None:
        """Periodic work of `kind` (eval, sample, checkpoint) took `seconds`."""
        self.work_s.setdefault(kind, collections.deque(maxlen=ETA_WORK_KEPT)).append(seconds)

    def seconds_left(self, step: int) -> float | None:
        """After `step` steps, before the work due at `step`; None before any step was timed."""
        times = self.step_s or ([self.opening] if self.opening is not None else [])
        if not times:
            return None
        t, last = self.train, self.total_steps
        left = sum(times) / len(times) * max(last - step, 0)
        due = {
            "eval": occurrences(t.eval_every, step - 1, last, at_end=bool(t.eval_every)),
            "sample": occurrences(t.sample_every, step - 1, last, at_end=False),
            "checkpoint": occurrences(t.checkpoint_every, step - 1, last, at_end=True),
        }
        for kind, durations in self.work_s.items():
            left += due.get(kind, 0) * sum(durations) / len(durations)
        return left
