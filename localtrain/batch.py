"""The batch arithmetic, in one place: tokens per step, the run's length in steps, the
batch's split over processes and over micro-batches.

A step trains on train.batch_size sequences of model.seq_len tokens whatever the machine:
processes each take an equal share (`check_world`), and each share runs as micro-batches
that divide it exactly (`micro_batch_candidates`), their gradients accumulated.
"""

from __future__ import annotations

import math

from localtrain.config import Config
from localtrain.errors import LocaltrainError
from localtrain.metrics import params_count


def micro_batch_candidates(batch_size: int) -> list[int]:
    """Divisors of the batch, largest first: the effective batch stays exactly batch_size."""
    small = [m for m in range(1, math.isqrt(batch_size) + 1) if batch_size % m == 0]
    return sorted({*small, *(batch_size // m for m in small)}, reverse=True)


def next_smaller_micro(batch_size: int, micro: int) -> int | None:
    """The largest divisor of batch_size at most half of micro (the OOM back-off step)."""
    return next((m for m in micro_batch_candidates(batch_size) if m <= micro // 2), None)


def tokens_per_step(config: Config) -> int:
    return config.train.batch_size * config.model.seq_len


def total_tokens(config: Config, params: int) -> int:
    """The token budget: max_steps or max_tokens, else 20 tokens per parameter (whole steps)."""
    per_step = tokens_per_step(config)
    if config.train.max_steps:
        return config.train.max_steps * per_step
    wanted = config.train.max_tokens or 20 * params
    return max(1, -(-wanted // per_step)) * per_step


def total_steps(config: Config, vocab_size: int) -> int:
    """The run's optimizer steps: its token budget in whole steps."""
    rows = config.model.vocab_rows(vocab_size)
    return total_tokens(config, params_count(config.model, rows)) // tokens_per_step(config)


def check_world(config: Config, world_size: int) -> int:
    """Sequences per process per step; the batch must split evenly over the processes."""
    if config.train.batch_size % world_size:
        raise LocaltrainError(
            f"train.batch_size={config.train.batch_size} cannot be split evenly over {world_size} processes."
            f" Pick a batch size that {world_size} divides, e.g. --set train.batch_size="
            f"{-(-config.train.batch_size // world_size) * world_size}."
        )
    return config.train.batch_size // world_size
