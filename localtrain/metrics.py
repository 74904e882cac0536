"""Perplexity, bits per byte, model FLOPs and MFU, and the cached matmul peak."""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Callable

from localtrain.config import ModelConfig
from localtrain.files import read_table, write_table
from localtrain.hardware import cpu_model

LN2 = math.log(2.0)


def perplexity(mean_nats: float) -> float:
    """exp of the mean loss; capped so a diverged loss stays a finite number."""
    return math.exp(min(mean_nats, 700.0))


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Tokenizer-independent loss: total nats / (ln 2 x UTF-8 bytes of the predicted text)."""
    return total_nats / (LN2 * total_bytes) if total_bytes else float("nan")


def block_params(model: ModelConfig) -> int:
    """Parameters of one transformer block (attention, MLP and its two norms)."""
    d, kv = model.n_embd, model.kv_heads * model.head_dim
    return 2 * d * d + 2 * d * kv + 3 * d * model.ffn_size + 2 * d


def root_params(model: ModelConfig, vocab_rows: int) -> int:
    """Parameters outside the blocks: the (padded) tied embedding and the final norm."""
    return vocab_rows * model.n_embd + model.n_embd


def params_count(model: ModelConfig, vocab_rows: int) -> int:
    """Parameters of the decoder; the tied embedding (padded rows included) counted once."""
    return model.n_layer * block_params(model) + root_params(model, vocab_rows)


def flops_per_token(model: ModelConfig, vocab_rows: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + 12 L d T, as in PaLM's appendix B.

    N counts the tied embedding once: its lookup is free but the same matrix is the
    output projection, a real matmul.
    """
    return 6.0 * params_count(model, vocab_rows) + 12.0 * model.n_layer * model.n_embd * model.seq_len


def mfu(flops_token: float, tokens_per_s: float, peak_flops: float) -> float:
    return flops_token * tokens_per_s / peak_flops if peak_flops > 0 else 0.0


def cached_peak_flops(cache_dir: Path, key: str, measure: Callable[[], float]) -> tuple[float, bool]:
    """The peak for `key` from `cache_dir/peak_flops.json`, measuring it once if absent.

    Returns (flops, was_cached).
    """
    path = cache_dir / "peak_flops.json"
    full_key = f"{platform.node()}|{cpu_model()}|{key}"
    table = read_table(path)
    if isinstance(table.get(full_key), (int, float)) and table[full_key] > 0:
        return float(table[full_key]), True
    flops = measure()
    table[full_key] = flops
    write_table(path, table)
    return flops, False
