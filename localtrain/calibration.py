"""Calibrate the memory model: measure a shape's peak at two micro-batch sizes.

Each measurement runs `localtrain.backends.calibrate` in its own subprocess (a Metal
out-of-memory kills the process, and a CPU peak RSS belongs to one process). Two sizes
give the fixed bytes and the bytes per sequence; the results are cached per machine and
shape in the cache directory.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from localtrain.config import Config
from localtrain.errors import LocaltrainError
from localtrain.files import write_atomic
from localtrain.hardware import Machine
from localtrain.planner import Calibration, Plan, micro_batch_candidates

CACHE_FILE = "calibration.json"


def measure(plan: Plan, config: Config, micro_batch_size: int, timeout: float = 600) -> dict:
    """Peak bytes and tokens/s of a few optimizer steps at one micro-batch size, in a subprocess."""
    spec = {
        "backend": plan.backend, "device": plan.device, "dtype": plan.dtype,
        "vocab_size": plan.vocab_size, "micro_batch_size": micro_batch_size,
        "activation_checkpointing": False, "model": asdict(config.model),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "localtrain.backends.calibrate", json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise LocaltrainError(
            f"The calibration probe at micro-batch {micro_batch_size} failed ({last}). If it ran out"
            " of memory, the model does not fit at that size: run without --probe, or lower the"
            " model size."
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe_sizes(plan: Plan) -> tuple[int, int]:
    """Two micro-batch sizes to measure: the planned one and about half of it (or the next up)."""
    sizes = micro_batch_candidates(plan.batch_size // plan.world_size)  # largest first
    top = plan.micro_batch_size
    lower = [m for m in sizes if m <= top // 2]
    if lower:
        return lower[0], top
    higher = [m for m in sizes if m > top]
    return top, (higher[-1] if higher else top)


def key(plan: Plan, config: Config, machine: Machine) -> str:
    return json.dumps([platform.node(), machine.cpu_model, [g.name for g in machine.gpus], plan.backend,
                       plan.device, plan.dtype, plan.vocab_size, asdict(config.model)], sort_keys=True)


def _table(cache_dir: Path) -> dict:
    try:
        return json.loads((cache_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def cached(plan: Plan, config: Config, machine: Machine, cache_dir: Path) -> Calibration | None:
    """An earlier calibration of this shape on this machine, if there is one."""
    c = _table(cache_dir).get(key(plan, config, machine))
    if c is None:
        return None
    return Calibration(c["fixed_bytes"], c["per_sample_bytes"], c["mfu"], [tuple(p) for p in c["points"]])


def calibrate(plan: Plan, config: Config, machine: Machine, cache_dir: Path, peak_flops: float) -> Calibration:
    """Measure (or read from the cache) the shape's fixed and per-sequence peak bytes."""
    found = cached(plan, config, machine, cache_dir)
    if found is not None:
        return found
    path = cache_dir / CACHE_FILE
    table = _table(cache_dir)
    k = key(plan, config, machine)
    a, b = probe_sizes(plan)
    first = measure(plan, config, a)
    second = measure(plan, config, b) if b != a else first
    per_sample = (second["peak_bytes"] - first["peak_bytes"]) // (b - a) if b != a else 0
    fixed = first["peak_bytes"] - per_sample * a
    best = max(first["tokens_per_s"], second["tokens_per_s"])
    mfu = best * plan.flops_per_token / peak_flops if peak_flops else 0.0
    points = [(a, first["peak_bytes"], first["tokens_per_s"]), (b, second["peak_bytes"], second["tokens_per_s"])]
    result = Calibration(fixed, per_sample, mfu, points)
    table[k] = {"fixed_bytes": fixed, "per_sample_bytes": per_sample, "mfu": mfu, "points": points}
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(table, indent=1, sort_keys=True))
    return result
