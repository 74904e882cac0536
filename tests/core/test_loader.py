"""Training windows, their resumable cursor, the fixed validation batches, the LR schedule."""

from __future__ import annotations

import numpy as np
import pytest

from localtrain.config import TrainConfig
from localtrain.data.loader import TrainWindows, check_train_size, eval_windows
from localtrain.errors import DataError
from localtrain.train import lr_at


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
    n = w.windows_per_epoch()
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
