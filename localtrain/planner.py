"""The memory model and `plan()`: which backend, dtype, micro-batch and accumulation fit.

The model predicts the peak memory of a training step as named terms (weights,
gradients, AdamW moments, activations, logits, backend overhead), so `doctor` can show
the breakdown. The activation and logits coefficients were fitted to peaks measured on
a CPU (peak RSS of a process running two optimizer steps, 18 shapes, see
`scripts/bench_planner.py`); a calibration probe (`calibrate`) measures the same peak on
this machine for a given shape and replaces the prediction where one exists.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from localtrain.config import Config, ModelConfig
from localtrain.errors import LocaltrainError
from localtrain.hardware import Machine
from localtrain.metrics import flops_per_token, params_count

GB = 1024**3
MB = 1024**2

# Per token and layer, the block saves about 11 d + 4 f values for its backward (norm
# inputs and outputs, q/k/v before and after rope, attention output, the MLP's gate,
# up, SiLU and product); measured peaks carry 1.2x that (allocator slack, transients).
LAYER_FACTOR = 1.2
# The logits, their log-softmax and their gradient: 2.6 fp32 copies of a vocab row per token.
LOGITS_COPIES_FP32 = 2.6
# Under autocast the logits are also held once in 16 bits before the fp32 loss.
LOGITS_BYTES_MIXED = 2 + LOGITS_COPIES_FP32 * 4
# Embedding output, final norm input/output and the loss's row buffers, per token.
EMBED_VALUES = 12
# Memory a backend holds before the model: the interpreter and libraries (CPU RSS), a
# CUDA context outside the caching allocator, Metal/MLX runtime buffers.
OVERHEAD = {"cpu": 330 * MB, "cuda": 600 * MB, "mps": 500 * MB, "mlx": 200 * MB}
# Share of the budget kept free, for fragmentation and what the model does not count.
SAFETY_MARGIN = 0.10
# Model FLOPs utilisation assumed before a calibration measures it (CPU: measured on
# this project's benchmarks, 49-60%; GPUs: typical eager mixed-precision figures).
ASSUMED_MFU = {"cpu": 0.50, "cuda": 0.35, "mps": 0.25, "mlx": 0.30}
# Approximate bytes of text and of the download for the named sources.
SOURCE_BYTES = {
    "tinyshakespeare": (1_115_394, 1_115_394),
    "wikitext-103": (540_000_000, 190_000_000),
    "enwiki": (21_000_000_000, 25_000_000_000),
    "hf:Skylion007/openwebtext": (40_000_000_000, 13_000_000_000),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak bytes of one training step, by named term."""

    terms: dict[str, int]
    per_sample: int
    """Bytes each extra sequence in the micro-batch adds (activations and logits)."""

    @property
    def total(self) -> int:
        return sum(self.terms.values())


@dataclass
class Plan:
    """What `localtrain run` will do on this machine, and what it predicts."""

    backend: str
    device: str
    dtype: str
    batch_size: int
    micro_batch_size: int
    grad_accum_steps: int
    activation_checkpointing: bool
    params: int
    vocab_size: int
    flops_per_token: float
    tokens_per_step: int
    total_steps: int
    total_tokens: int
    memory: dict[str, int]
    predicted_peak_bytes: int
    budget_bytes: int
    budget_source: str
    fits: bool
    """Whether the predicted peak at the chosen micro-batch is within the budget."""
    min_peak_bytes: int
    """The predicted peak at one sequence per micro-batch with activation checkpointing."""
    predicted_tokens_per_s: float
    predicted_seconds: float
    disk_needed: dict[str, int]
    disk_free: dict[str, int]
    calibrated: bool = False
    world_size: int = 1
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_size(text: str) -> int:
    """Bytes in "6GB", "512 MiB", "1.5g" or a plain number."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def vocab_rows(model: ModelConfig, vocab_size: int) -> int:
    return -(-vocab_size // model.pad_vocab_multiple) * model.pad_vocab_multiple


def memory_estimate(
    model: ModelConfig,
    vocab_size: int,
    micro_batch_size: int,
    dtype: str,
    device: str,
    checkpointing: bool = False,
    fused_attention: bool = True,
) -> MemoryEstimate:
    """The named terms of the predicted peak of one optimizer step."""
    rows = vocab_rows(model, vocab_size)
    p = params_count(model, rows)
    mixed = dtype != "float32"
    d, f, kv = model.n_embd, model.ffn_size, model.kv_heads * model.head_dim
    act_bytes = 2 if mixed else 4
    # Saved per token: norm inputs/outputs and the attention input/output (8 d), q/k/v
    # around rope (3 kv), the MLP's gate/up, SiLU and product (4 f). The two residual
    # values stay fp32 under autocast; the rest is 16-bit there.
    layer = LAYER_FACTOR * (2 * d * 4 + (6 * d + 3 * kv + 4 * f) * act_bytes)
    if not fused_attention:
        # The math path keeps the score and probability matrices: 2 x heads x T per token.
        layer += 2 * model.n_head * model.seq_len * 4
    if checkpointing:
        # Only each block's input is kept; one block is recomputed at a time.
        per_token_layers = model.n_layer * d * 4 + layer
    else:
        per_token_layers = model.n_layer * layer
    logits = rows * (LOGITS_BYTES_MIXED if mixed else LOGITS_COPIES_FP32 * 4)
    per_token = per_token_layers + logits + EMBED_VALUES * d * 4
    per_sample = int(per_token * model.seq_len)
    terms = {
        "weights": 4 * p,
        # Autocast keeps a 16-bit copy of each weight for the step.
        "weight_casts": 2 * p if mixed else 0,
        "gradients": 4 * p,
        "optimizer": 8 * p,
        "activations": int(per_token_layers * model.seq_len + EMBED_VALUES * d * 4 * model.seq_len) * micro_batch_size,
        "logits": int(logits * model.seq_len) * micro_batch_size,
        "overhead": OVERHEAD.get("mlx" if device == "mlx" else device, OVERHEAD["cpu"]),
    }
    return MemoryEstimate(terms=terms, per_sample=per_sample)


def choose_backend(config: Config, machine: Machine) -> tuple[str, str, list[str]]:
    """(backend, device, notes): MLX on Apple silicon when installed, else MPS, CUDA, CPU."""
    notes: list[str] = []
    backend, device = config.run.backend, config.run.device
    if backend == "auto":
        if machine.apple_silicon and "mlx" in machine.backends and device in ("auto", "mps"):
            return "mlx", "mlx", ["MLX is installed on Apple silicon: the fastest backend here."]
        backend = "torch"
    if backend == "mlx":
        if not machine.apple_silicon:
            notes.append("MLX on this machine runs on its CPU build: far slower than torch here.")
        return "mlx", "mlx", notes
    if device == "auto":
        device = "cuda" if machine.has_cuda else "mps" if machine.mps_available else "cpu"
    return backend, device, notes


def choose_dtype(config: Config, machine: Machine, backend: str, device: str) -> tuple[str, list[str]]:
    if config.train.dtype != "auto":
        return config.train.dtype, []
    if device == "cuda":
        bf16 = all(g.bf16 for g in machine.gpus) if machine.gpus else False
        return ("bfloat16" if bf16 else "float16"), []
    if device == "mps" or (device == "mlx" and machine.apple_silicon):
        return ("float32" if "M1" in machine.chip else "bfloat16"), []
    # Otherwise the CPU (MLX's CPU build included) decides.
    if machine.cpu_native_bf16:
        return "bfloat16", ["The CPU computes bf16 natively (AVX512_BF16/AMX)."]
    return "float32", ["No native bf16 on this CPU (no AVX512_BF16/AMX): bf16 autocast would run"
                       " many times slower than fp32, so fp32."]


def budget(config: Config, machine: Machine, device: str, local_world_size: int = 1) -> tuple[int, str]:
    """Bytes one process of the run may use, and where that number comes from."""
    if config.run.memory_budget != "auto":
        return parse_size(config.run.memory_budget), f"run.memory_budget = {config.run.memory_budget}"
    if device == "cuda" and machine.gpus:
        free = min(g.free_bytes for g in machine.gpus)
        return free, f"free memory of the GPU ({free / GB:.1f} GiB)"
    if device == "mlx" and machine.mlx_max_recommended_working_set_bytes:
        b = machine.mlx_max_recommended_working_set_bytes
        return b, f"MLX's recommended working set ({b / GB:.1f} GiB)"
    if device == "mps" and machine.mps_recommended_max_bytes:
        b = machine.mps_recommended_max_bytes
        return b, f"MPS's recommended maximum ({b / GB:.1f} GiB)"
    headroom = max(GB, machine.ram_total_bytes // 10)
    b = max(0, machine.ram_available_bytes - headroom) // local_world_size
    share = f", shared by {local_world_size} processes" if local_world_size > 1 else ""
    return b, f"available RAM minus {headroom / GB:.1f} GiB headroom{share}"


def micro_batch_candidates(batch_size: int) -> list[int]:
    """Divisors of the batch, largest first: the effective batch stays exactly batch_size."""
    return [m for m in range(batch_size, 0, -1) if batch_size % m == 0]


def next_smaller_micro(batch_size: int, micro: int) -> int | None:
    """The largest divisor of batch_size at most half of micro (the OOM back-off step)."""
    smaller = [m for m in micro_batch_candidates(batch_size) if m <= micro // 2]
    return smaller[0] if smaller else None


@dataclass(frozen=True)
class Calibration:
    """A measured peak at two micro-batch sizes and the throughput seen, for one shape."""

    fixed_bytes: int
    per_sample_bytes: int
    mfu: float
    points: list[tuple[int, int, float]]
    """(micro_batch_size, peak bytes, tokens/s) as measured."""

    def peak(self, micro_batch_size: int) -> int:
        return self.fixed_bytes + self.per_sample_bytes * micro_batch_size


def estimate_vocab(config: Config) -> int:
    # Before the tokenizer exists: a char vocabulary is the alphabet (a few hundred at most).
    return 256 if config.data.tokenizer == "char" else config.data.vocab_size


def source_bytes(config: Config) -> tuple[int, int, str]:
    """(text bytes, download bytes, how known) of the configured data source."""
    from pathlib import Path

    from localtrain.data.sources import list_files, resolve_source

    name = config.data.source
    if name in SOURCE_BYTES:
        text, download = SOURCE_BYTES[name]
        return text, download, "estimate for the named source"
    try:
        root, include, exclude = resolve_source(config.data)
    except LocaltrainError:
        return 0, 0, "unknown until downloaded"
    if Path(root).is_file():
        return Path(root).stat().st_size, 0, "measured"
    return sum(f.size for f in list_files(root, include, exclude)), 0, "measured"


def disk_needed(config: Config, params: int, vocab_size: int) -> dict[str, int]:
    """Bytes of disk the data (download and token files) and the checkpoints will take."""
    text, download, _ = source_bytes(config)
    bytes_per_token = 1.0 if config.data.tokenizer == "char" else 3.0 if vocab_size < 8192 else 3.6
    token_file = int(text / bytes_per_token) * (2 if vocab_size <= 65536 else 4)
    # Every kept checkpoint holds weights and both moments, one more is being written,
    # and best/ holds weights.
    checkpoints = 12 * params * (config.train.keep_checkpoints + 1) + 4 * params
    return {"data": download + token_file, "checkpoints": checkpoints}


def total_tokens(config: Config, params: int) -> int:
    """The token budget: max_steps or max_tokens, else 20 tokens per parameter."""
    per_step = config.tokens_per_step()
    if config.train.max_steps:
        return config.train.max_steps * per_step
    if config.train.max_tokens:
        return -(-config.train.max_tokens // per_step) * per_step
    return -(-20 * params // per_step) * per_step


def plan(
    config: Config,
    machine: Machine,
    vocab_size: int | None = None,
    peak_flops: float | None = None,
    calibration: Calibration | None = None,
    world_size: int = 1,
    local_world_size: int = 1,
) -> Plan:
    """Choose backend, dtype, micro-batch, accumulation and checkpointing; predict the rest.

    Under data parallelism the plan is per device: each of `world_size` processes trains on
    batch_size / world_size sequences a step.
    """
    backend, device, notes = choose_backend(config, machine)
    dtype, dtype_notes = choose_dtype(config, machine, backend, device)
    notes += dtype_notes
    vocab = vocab_size or estimate_vocab(config)
    rows = vocab_rows(config.model, vocab)
    params = params_count(config.model, rows)
    limit, source = budget(config, machine, device, local_world_size)
    usable = int(limit * (1 - SAFETY_MARGIN))
    fused = device != "mps"

    def peak(micro: int, ckpt: bool) -> tuple[MemoryEstimate, int]:
        est = memory_estimate(config.model, vocab, micro, dtype, device, ckpt, fused)
        measured = calibration.peak(micro) if calibration and not ckpt else None
        return est, measured if measured is not None else est.total

    if config.train.batch_size % world_size:
        raise LocaltrainError(
            f"train.batch_size={config.train.batch_size} cannot be split evenly over {world_size} processes."
            f" Pick a batch size that {world_size} divides, e.g. --set train.batch_size="
            f"{-(-config.train.batch_size // world_size) * world_size}."
        )
    batch = config.train.batch_size // world_size
    if config.train.micro_batch_size:
        micro, ckpt = config.train.micro_batch_size, False
        if peak(micro, False)[1] > usable and peak(micro, True)[1] <= usable:
            ckpt = True
            notes.append("Activation checkpointing is on: the set micro-batch does not fit without it.")
        elif peak(micro, False)[1] > usable:
            notes.append(f"train.micro_batch_size={micro} is predicted to need more than the budget; if"
                         " memory runs out the micro-batch backs off.")
    else:
        choice = next(
            ((m, c) for c in (False, True) for m in micro_batch_candidates(batch) if peak(m, c)[1] <= usable),
            None,
        )
        micro, ckpt = choice or (1, True)
        if choice and ckpt:
            notes.append("Activation checkpointing is on: even one sequence does not fit without it.")
    est, predicted = peak(micro, ckpt)
    tokens = total_tokens(config, params)
    per_step = config.tokens_per_step()
    fpt = flops_per_token(config.model, rows)
    mfu = calibration.mfu if calibration else ASSUMED_MFU.get(device, 0.3)
    tok_s = world_size * mfu * peak_flops / fpt if peak_flops else 0.0
    disk = disk_needed(config, params, vocab)
    free = {k: v["free"] for k, v in machine.disk.items()}
    return Plan(
        backend=backend, device=device, dtype=dtype, batch_size=config.train.batch_size, micro_batch_size=micro,
        grad_accum_steps=batch // micro, activation_checkpointing=ckpt, params=params, vocab_size=vocab,
        flops_per_token=fpt, tokens_per_step=per_step, total_steps=tokens // per_step, total_tokens=tokens,
        memory=est.terms, predicted_peak_bytes=predicted, budget_bytes=limit, budget_source=source,
        fits=predicted <= limit, min_peak_bytes=peak(1, True)[1], predicted_tokens_per_s=tok_s,
        predicted_seconds=tokens / tok_s if tok_s else math.inf,
        disk_needed=disk, disk_free=free, calibrated=calibration is not None, world_size=world_size,
        notes=notes,
    )


def check_plan(plan: Plan, machine: Machine) -> None:
    """Refuse, with the numbers, a plan that cannot fit the memory or the disk."""
    if plan.min_peak_bytes > plan.budget_bytes:
        raise LocaltrainError(
            f"This model does not fit: one step needs about {plan.min_peak_bytes / GB:.2f} GiB"
            " even at micro-batch 1 with activation checkpointing, and the"
            f" budget is {plan.budget_bytes / GB:.2f} GiB ({plan.budget_source}). Lower model.n_embd,"
            " model.n_layer, model.seq_len or data.vocab_size, or raise run.memory_budget if more"
            " memory is really free."
        )
    needed = plan.disk_needed["data"] + plan.disk_needed["checkpoints"]
    same_fs = machine.disk["runs"].get("device") == machine.disk["cache"].get("device")
    checks = (
        [("the run and cache directories", needed, min(plan.disk_free.values()))]
        if same_fs
        else [("the cache directory", plan.disk_needed["data"], plan.disk_free["cache"]),
              ("the run directory", plan.disk_needed["checkpoints"], plan.disk_free["runs"])]
    )
    for where, need, free in checks:
        if need > free:
            raise LocaltrainError(
                f"Not enough disk: the data (download and token files, about"
                f" {plan.disk_needed['data'] / GB:.1f} GiB) and checkpoints (about"
                f" {plan.disk_needed['checkpoints'] / GB:.1f} GiB) need {need / GB:.1f} GiB on {where},"
                f" which has {free / GB:.1f} GiB free. Nothing was downloaded or written. Free some"
                " space, point $LOCALTRAIN_CACHE or --run-dir elsewhere, or lower"
                " train.keep_checkpoints."
            )
