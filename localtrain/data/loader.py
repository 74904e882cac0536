"""Training and validation windows over the token shards of a split (one array or a `ShardedTokens`).

Training walks fixed-length windows in a seeded random order, epoch after epoch; each
epoch shifts the window boundaries by a seeded offset so a small corpus is not cut the
same way twice. Where the walk stands is a cursor of two integers (epoch, index), saved
in every checkpoint: resuming from it continues with exactly the next window.

With progressive phases the training tokens come as a sequence of growing prefixes of
one token stream (phase k: the first N_k documents). Epochs 0 .. e-1 walk phase 1,
the next e epochs phase 2, and so on (e = data.phase_epochs); the last phase takes every
epoch after that. Which windows a step takes depends only on the cursor, never on when
a phase became ready, so a run that waited for its data and one that did not train on
the same windows.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from localtrain.errors import DataError

Cursor = tuple[int, int]
POLL_SECONDS = 0.2
"""How often a run waiting for a phase of its data that is not written yet looks again."""


class Phases(Protocol):
    """The training tokens of each phase: phase k's tokens are a prefix of phase k + 1's."""

    def __len__(self) -> int: ...

    def ready(self, phase: int) -> bool:
        """Whether phase `phase`'s tokens are all written."""

    def tokens(self, phase: int) -> Any:
        """The tokens of a ready phase (an array or a `ShardedTokens`)."""

    def describe(self, phase: int) -> str:
        """What a run waiting for `phase` is waiting for."""


class OnePhase:
    """One array of training tokens, always ready."""

    def __init__(self, tokens: Any) -> None:
        self._tokens = tokens

    def __len__(self) -> int:
        return 1

    def ready(self, phase: int) -> bool:
        return True

    def tokens(self, phase: int) -> Any:
        return self._tokens

    def describe(self, phase: int) -> str:
        return "The training tokens are all there."


class TrainWindows:
    def __init__(self, tokens: Any, seq_len: int, seed: int, phase_epochs: int = 1) -> None:
        self.phases: Phases = tokens if hasattr(tokens, "ready") else OnePhase(tokens)
        self.seq_len, self.seed, self.phase_epochs = seq_len, seed, max(1, phase_epochs)
        self._orders: dict[int, np.ndarray] = {}
        self._newest = -1  # the latest phase whose tokens are open

    @property
    def tokens(self) -> Any:
        """The tokens of the latest phase opened (every earlier phase is a prefix of them)."""
        return self.phases.tokens(max(self._newest, 0))

    def phase_of(self, epoch: int) -> int:
        return min(epoch // self.phase_epochs, len(self.phases) - 1)

    def _epoch_starts(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            phase = self.phase_of(epoch)
            self._newest = max(self._newest, phase)
            length = len(self.phases.tokens(phase))
            rng = np.random.default_rng([self.seed, epoch])
            # Epoch 0 starts at offset 0; later epochs shift every boundary by a seeded
            # offset (losing at most one window to it).
            offset = int(rng.integers(0, self.seq_len)) if epoch else 0
            n = (length - 1 - offset) // self.seq_len
            if n < 1:
                offset, n = 0, (length - 1) // self.seq_len
            if len(self._orders) >= 2:  # the current epoch and the next are enough
                del self._orders[min(self._orders)]
            self._orders[epoch] = offset + rng.permutation(n).astype(np.int64) * self.seq_len
        return self._orders[epoch]

    def missing_phase(self, cursor: Cursor, count: int) -> int | None:
        """The first phase that `take(cursor, count)` needs and that is not ready yet, or None."""
        epoch, index = cursor
        while True:
            phase = self.phase_of(epoch)
            if not self.phases.ready(phase):
                return phase
            count -= len(self._epoch_starts(epoch)) - index
            if count <= 0:
                return None
            epoch, index = epoch + 1, 0

    def take(self, cursor: Cursor, count: int) -> tuple[np.ndarray, np.ndarray, Cursor]:
        """`count` windows from `cursor` on: inputs x and targets y, (count, seq_len) each."""
        epoch, index = cursor
        starts: list[int] = []
        while len(starts) < count:
            order = self._epoch_starts(epoch)
            chunk = order[index : index + count - len(starts)]
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
            f" model.seq_len + 1 = {seq_len + 1}. Hold out more text with --set data.val_fraction=0.2,"
            f" use shorter windows with --set model.seq_len={max(4, seq_len // 4)}, or give more text."
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
            f" text, or use shorter windows (--set model.seq_len={max(4, (tokens - 1) // micro_batch_size)}) or"
            f" smaller batches (--set train.batch_size={max(1, windows)})."
        )
