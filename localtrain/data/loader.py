"""Training and validation windows over the token shards of a split (one array or a `ShardedTokens`).

Training walks fixed-length windows in a seeded random order, epoch after epoch; each
epoch shifts the window boundaries by a seeded offset so a small corpus is not cut the
same way twice. Where the walk stands is a cursor of two integers (epoch, index), saved
in every checkpoint: resuming from it continues with exactly the next window.
"""

from __future__ import annotations

import numpy as np

from localtrain.errors import DataError

Cursor = tuple[int, int]


class TrainWindows:
    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int) -> None:
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self._epoch = -1
        self._starts = np.empty(0, dtype=np.int64)

    def windows_per_epoch(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def _epoch_starts(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            # Epoch 0 starts at offset 0; later epochs shift every boundary by a seeded
            # offset (losing at most one window to it).
            offset = int(rng.integers(0, self.seq_len)) if epoch else 0
            n = (len(self.tokens) - 1 - offset) // self.seq_len
            if n < 1:
                offset, n = 0, self.windows_per_epoch()
            self._starts = offset + rng.permutation(n).astype(np.int64) * self.seq_len
            self._epoch = epoch
        return self._starts

    def take(self, cursor: Cursor, count: int) -> tuple[np.ndarray, np.ndarray, Cursor]:
        """`count` windows from `cursor` on: inputs x and targets y, (count, seq_len) each."""
        epoch, index = cursor
        starts: list[int] = []
        while len(starts) < count:
            order = self._epoch_starts(epoch)
            need = count - len(starts)
            chunk = order[index : index + need]
            starts.extend(int(s) for s in chunk)
            index += len(chunk)
            if index >= len(order):
                epoch, index = epoch + 1, 0
        x, y = gather(self.tokens, starts, self.seq_len)
        return x, y, (epoch, index)


def gather(tokens: np.ndarray, starts: list[int], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.stack([np.asarray(tokens[s : s + seq_len + 1]) for s in starts])
    return rows[:, :-1], rows[:, 1:]


def eval_windows(tokens: np.ndarray, seq_len: int, batches: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fixed validation batches: windows spread evenly over the split, the same every time."""
    available = (len(tokens) - 1) // seq_len
    wanted = min(available, batches * batch_size)
    if wanted < 1:
        raise DataError(
            f"The validation split has {len(tokens)} tokens, fewer than one window of"
            f" model.seq_len + 1 = {seq_len + 1}. Raise data.val_fraction, lower model.seq_len,"
            " or give more text."
        )
    picks = np.linspace(0, available - 1, wanted).round().astype(np.int64)
    starts = [int(i) * seq_len for i in picks]
    return [gather(tokens, starts[i : i + batch_size], seq_len) for i in range(0, wanted, batch_size)]


def check_train_size(tokens: int, seq_len: int, micro_batch_size: int) -> None:
    windows = (tokens - 1) // seq_len
    if windows < micro_batch_size:
        raise DataError(
            f"The training split has {tokens} tokens, which makes {windows} windows of"
            f" model.seq_len={seq_len}, but one micro-batch needs train.micro_batch_size="
            f"{micro_batch_size} windows ({micro_batch_size * seq_len + 1} tokens). Give more"
            " text, or lower model.seq_len or train.micro_batch_size / train.batch_size."
        )
