"""The ETA: a recent window of step wall time plus the evaluations, samples and checkpoints
still to come, driven by a clock the test owns (no wall time is measured)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loop_helpers import make_trainer

from localtrain import config as cfg, events as ev
from localtrain.backends.torch_backend import TorchBackend
from localtrain.schedule import Eta, occurrences
from localtrain.train import Trainer

SLOW_STEPS, SLOW_S, STEP_S = 30, 10.0, 1.0
EVAL_BATCH_S, SAMPLE_S, SAVE_S = 5.0, 0.5, 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TimedBackend(TorchBackend):
    """The real torch backend; each call moves the test's clock by what it would cost on a slow
    machine: the first steps slow (a cold start), evaluations and saves expensive."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__("cpu", "float32")
        self.clock, self.steps = clock, 0

    def train_step(self, micro_batches, lr):
        self.steps += 1
        self.clock.now += SLOW_S if self.steps <= SLOW_STEPS else STEP_S
        return super().train_step(micro_batches, lr)

    def token_losses(self, x, y):
        self.clock.now += EVAL_BATCH_S
        return super().token_losses(x, y)

    def decoder(self, dtype=None):
        self.clock.now += SAMPLE_S  # one live sample
        return super().decoder(dtype)

    def state_arrays(self):
        self.clock.now += SAVE_S  # every checkpoint and every new best/
        return super().state_arrays()


def trainer_on(code_corpus: Path, run_dir: Path, clock: FakeClock, total: int, emit) -> Trainer:
    return make_trainer(code_corpus, run_dir, emit, TimedBackend(clock), [
        f"train.max_steps={total}", "train.eval_every=50", "train.sample_every=50", "train.checkpoint_every=100",
        "train.sample_prompts=[\"def \", \"class \"]",
    ], clock=clock)


def test_the_eta_after_a_slow_start_is_within_a_fifth_of_the_time_left(tmp_path, code_corpus) -> None:
    # Bugs caught: an ETA averaged since the start (the slow opening inflates it ~2x at step 200),
    # and one that leaves out the evaluations, samples and checkpoints still to come (~25% short).
    clock = FakeClock()
    at: dict[int, tuple[float, float]] = {}
    ended: list[float] = []

    def emit(event: ev.Event) -> None:
        if isinstance(event, ev.Step):
            at[event.step] = (clock.now, event.eta_s)
        elif isinstance(event, ev.Done):
            ended.append(clock.now)

    trainer = trainer_on(code_corpus, tmp_path / "run", clock, 300, emit)
    done = trainer.run()
    assert done.reason == "complete" and done.step == 300
    when, eta = at[200]
    left = ended[0] - when  # measured on the same clock: what the rest of the run really took
    assert left > 100 * STEP_S  # the evaluations and saves of the last third cost real time
    assert abs(eta - left) <= 0.2 * left, (eta, left)
    # A step just after the slow opening still sees it; by step 200 it has left the window.
    assert at[31][1] > at[200][1] * 1.5


def test_the_eta_counts_work_at_the_steps_it_falls_on() -> None:
    train = cfg.resolve("python-stdlib", ["train.eval_every=100", "train.sample_every=50",
                                          "train.checkpoint_every=500"]).train
    # Evaluations after step 250 of 1,000: 300, 400, ..., 1,000.
    assert occurrences(100, 250, 1000, at_end=True) == 8
    # A run that does not end on a multiple still evaluates (and checkpoints) at its last step.
    assert occurrences(100, 250, 1050, at_end=True) == 9
    assert occurrences(0, 0, 1050, at_end=True) == 1  # checkpoint_every=0: only the final one
    assert occurrences(50, 999, 1000, at_end=False) == 1
    eta = Eta(train, 1000)
    assert eta.seconds_left(0) is None
    eta.stepped(30.0)  # the opening step, alone, until another one is timed
    assert eta.seconds_left(1) == pytest.approx(999 * 30.0)
    for _ in range(60):
        eta.stepped(1.0)
    eta.worked("eval", 20.0)
    eta.worked("sample", 3.0)
    eta.worked("checkpoint", 5.0)
    # At step 900 (before its work): 100 steps, evals at 900 and 1,000, samples at 900, 950 and
    # 1,000, the checkpoint at 1,000.
    assert eta.seconds_left(900) == pytest.approx(100 * 1.0 + 2 * 20.0 + 3 * 3.0 + 1 * 5.0)
