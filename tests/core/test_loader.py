"""Training windows, their resumable cursor, the fixed validation batches, the LR schedule."""

from __future__ import annotations

import numpy as np
import pytest

from localtrain.config import TrainConfig
from localtrain.data.loader import TrainWindows, check_train_size, eval_windows
from localtrain.errors import DataError
from localtrain.schedule import lr_at


def tokens(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint16)


def test_targets_are_inputs_shifted_by_one() -> None:
    w = TrainWindows(tokens(1000), seq_len=16, seed=0)
    x, y, _ = w.take((0, 0), 4)
    assert x.shape == y.shape == (4, 16)
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert np.array_equal(y[:, -1], x[:, -1] + 1)


def test_the_cursor_continues_exactly_across_calls_and_epochs() -> None:
    a = TrainWindows(tokens(1000), seq_len=16, seed=3)
    xs, cursor = [], (0, 0)
    for _ in range(30):  # 30 x 5 = 150 windows: more than two epochs of 62
        x, _, cursor = a.take(cursor, 5)
        xs.append(x)
    b = TrainWindows(tokens(1000), seq_len=16, seed=3)
    x_all, _, cursor_all = b.take((0, 0), 150)
    assert np.array_equal(np.concatenate(xs), x_all)
    assert cursor == cursor_all
    assert cursor[0] == 2


def test_an_epoch_visits_every_window_once_and_epochs_differ() -> None:
    w = TrainWindows(tokens(1601), seq_len=16, seed=1)
    n = (1601 - 1) // 16  # whole windows of 16 inputs, each with its next token
    x0, _, cursor = w.take((0, 0), n)
    assert cursor == (1, 0)
    assert sorted(x0[:, 0].tolist()) == list(range(0, n * 16, 16))
    x1, _, _ = w.take(cursor, 10)
    assert not np.array_equal(x0[:10], x1)  # a new order (and a shifted cut) in epoch 1


def test_the_seed_changes_the_order() -> None:
    a, _, _ = TrainWindows(tokens(1000), 16, seed=1).take((0, 0), 8)
    b, _, _ = TrainWindows(tokens(1000), 16, seed=2).take((0, 0), 8)
    assert not np.array_equal(a, b)


def test_validation_batches_are_fixed_and_spread_over_the_split() -> None:
    val = tokens(10_001)
    batches = eval_windows(val, seq_len=100, batches=3, batch_size=4)
    assert len(batches) == 3 and all(x.shape == (4, 100) for x, _ in batches)
    starts = np.concatenate([x[:, 0] for x, _ in batches])
    assert starts[0] == 0 and starts[-1] == 9900
    again = eval_windows(val, seq_len=100, batches=3, batch_size=4)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))


def test_too_small_splits_say_the_numbers() -> None:
    with pytest.raises(DataError, match=r"has 50 tokens, fewer than one window of model.seq_len \+ 1 = 65"):
        eval_windows(tokens(50), seq_len=64, batches=2, batch_size=2)
    with pytest.raises(DataError) as info:
        check_train_size(500, seq_len=64, micro_batch_size=12)
    assert "500 tokens" in str(info.value) and "7 windows" in str(info.value)
    assert "train.micro_batch_size=12" in str(info.value) and "769 tokens" in str(info.value)
    check_train_size(12 * 64 + 1, seq_len=64, micro_batch_size=12)


def test_lr_warms_up_then_follows_a_cosine_to_the_floor() -> None:
    t = TrainConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, t, 110) for s in range(115)]
    assert lrs[0] == pytest.approx(1e-3 / 11)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))
    assert lrs[110] == lrs[114] == pytest.approx(1e-4)


class ArrayPhases:
    """Phases over one token array: phase k is its first ends[k] tokens; `ready` of them are written."""

    def __init__(self, tokens: np.ndarray, ends: list[int], ready: int) -> None:
        self.all, self.ends, self.written = tokens, ends, ready

    def __len__(self) -> int:
        return len(self.ends)

    def ready(self, phase: int) -> bool:
        return phase < self.written

    def tokens(self, phase: int) -> np.ndarray:
        assert self.ready(phase), "the loader opened a phase that is not ready"
        return self.all[: self.ends[phase]]


def test_phases_walk_each_prefix_for_phase_epochs_then_the_whole() -> None:
    seq, ends = 16, [321, 1601]
    w = TrainWindows(ArrayPhases(tokens(1601), ends, ready=2), seq_len=seq, seed=4, phase_epochs=2)
    first = (ends[0] - 1) // seq  # 20 windows per epoch of phase 1
    x, _, cursor = w.take((0, 0), first)
    assert cursor == (1, 0) and sorted(x[:, 0].tolist()) == list(range(0, first * seq, seq))
    seen = [x]
    while cursor[0] < 2:  # epoch 1 is phase 1 again, cut at a shifted offset
        x, _, cursor = w.take(cursor, 1)
        seen.append(x)
    assert cursor == (2, 0) and np.concatenate(seen).max() < ends[0] and len(seen) > first // 2
    x, _, cursor = w.take(cursor, 60)
    assert x.max() >= ends[0] and cursor == (2, 60)  # epoch 2 walks the whole stream
    assert w.phase_of(2) == w.phase_of(50) == 1


def test_a_loader_whose_next_phase_is_late_says_so_and_then_takes_the_same_windows() -> None:
    seq, ends = 16, [321, 1601]
    late = ArrayPhases(tokens(1601), ends, ready=1)
    w = TrainWindows(late, seq_len=seq, seed=4)
    ref = TrainWindows(ArrayPhases(tokens(1601), ends, ready=2), seq_len=seq, seed=4)
    assert w.missing_phase((0, 0), 20) is None  # exactly phase 1's 20 windows
    assert w.missing_phase((0, 0), 21) == 1 and w.missing_phase((0, 15), 8) == 1
    x, _, cursor = w.take((0, 0), 16)
    assert w.missing_phase(cursor, 8) == 1
    late.written = 2
    assert w.missing_phase(cursor, 8) is None
    got, _, end = w.take(cursor, 8)
    want_all, _, want_end = ref.take((0, 0), 24)
    assert np.array_equal(np.concatenate([x, got]), want_all) and end == want_end
