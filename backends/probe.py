"""Time training-step candidates of one shape, in this process: speed, peak memory, warm-up.

`python -m localtrain.backends.probe SPEC_JSON` reads one candidate a line on stdin (its
dtype, compile, micro-batch and checkpointing, as JSON) and answers each with one JSON
line on stdout as soon as it is measured. For each it builds the backend and model, runs
warm-up and timed optimizer steps over the per-process batch of random tokens, and
reports the median step time, the peak memory of those steps, the seconds a token of a
live sample takes in the candidate's dtype (timed once per dtype), and the warm-up a new
process would pay (for a compiled step: a compile that finds its kernels already in the
compiler's on-disk cache; that second compile is skipped, and the cold one reported, when
the candidate is ahead of the fastest so far over the run's `steps` even after it). The
tuner runs it in a subprocess: an out-of-memory that cannot be caught (Metal, the
kernel's OOM killer) or a crash loses one candidate, not the run.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

from localtrain.backends import backend_class
from localtrain.backends.base import is_out_of_memory
from localtrain.config import ModelConfig, TrainConfig

TIMED_STEPS = 3
"""Steps timed per candidate (fewer when one step takes longer than STEP_BUDGET_S)."""
STEP_BUDGET_S = 2.0
SLOWER = 1.25
"""A candidate whose first timed step is this much slower than the best so far stops there."""
DECODE_TOKENS = 32
"""Tokens decoded to time a live sample's generation in a candidate's dtype (once per dtype)."""


def _build(spec: dict, cand: dict):  # -> Backend
    backend = backend_class(spec["backend"])(spec["device"], cand["dtype"], spec["threads"], cand["compile"])
    backend.build(ModelConfig(**spec["model"]), spec["vocab_size"], 0)
    backend.configure_optimizer(TrainConfig())
    if spec.get("memory_limit"):
        backend.set_memory_limit(spec["memory_limit"])  # the run's own budget: beyond it is out of memory
    if cand.get("activation_checkpointing"):
        backend.set_activation_checkpointing(True)
    return backend


def _timed(step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def decode_seconds(backend) -> float:  # backend: Backend
    """Seconds per token of generating from a one-token prompt, after one untimed token (0 where
    the context window is too short to time any)."""
    decoder = backend.decoder()
    tokens = min(DECODE_TOKENS, decoder.window - 2)
    if tokens < 1:
        return 0.0
    decoder.start([0])
    decoder.extend(0)
    start = time.perf_counter()
    for _ in range(tokens):
        decoder.extend(0)
    return (time.perf_counter() - start) / tokens


def measure(spec: dict, cand: dict, decode: bool = False) -> dict:
    """One candidate's median step seconds, peak bytes and warm-up seconds (and, with `decode`,
    the seconds per token of a live sample in its dtype)."""
    micro, rank_batch, seq_len = cand["micro_batch_size"], spec["rank_batch"], spec["model"]["seq_len"]
    data = np.random.default_rng(0).integers(0, spec["vocab_size"], (rank_batch, seq_len + 1)).astype(np.int64)
    batches = [(data[i:i + micro, :-1], data[i:i + micro, 1:]) for i in range(0, rank_batch, micro)]
    backend = _build(spec, cand)
    backend.reset_peak_memory()

    def step() -> None:
        backend.train_step(batches, 1e-4)

    first = _timed(step)
    if cand["compile"]:
        _timed(step)  # the compiled step's second call still settles (autotuned kernels, allocator)
    times: list[float] = []
    best = spec.get("best_step_s") or 0.0
    status = "ok"
    timed, budget_s = spec.get("timed_steps", TIMED_STEPS), spec.get("step_budget_s", STEP_BUDGET_S)
    while len(times) < timed and (not times or sum(times) < budget_s):
        times.append(_timed(step))
        if best and len(times) == 1 and times[0] > SLOWER * best:
            status = "slower"
            break
    step_s = statistics.median(times)
    peak = backend.peak_memory_bytes()
    warmup = max(0.0, first - step_s)
    detail = f"first step {first:.2f} s, {len(times)} timed"
    decode_s = decode_seconds(backend) if decode else 0.0
    if cand["compile"] and status == "ok":
        steps = spec.get("steps") or 0
        if best and steps and warmup + steps * step_s < steps * best:
            # Ahead of the fastest so far even after a cold compile: a warm one changes no choice.
            detail += "; warm-up is this cold compile (a compile that finds its kernels cached is shorter)"
        else:
            # A new process compiles again; the kernels generated above sit in the on-disk cache by now.
            backend.clear_compile_cache()
            del backend
            gc.collect()
            again = _build(spec, cand)
            warmup = max(0.0, _timed(lambda: again.train_step(batches, 1e-4)) - step_s)
    return {"status": status, "step_s": step_s, "peak_bytes": int(peak), "warmup_s": warmup, "detail": detail,
            "decode_s": decode_s}


def main(spec: dict) -> None:
    decoded: set[str] = set()  # the dtypes whose decoding is timed already
    for line in sys.stdin:
        cand = json.loads(line)
        spec["best_step_s"] = cand.pop("best_step_s", None)
        try:
            result = measure(spec, cand, decode=cand["dtype"] not in decoded)
            if result["decode_s"]:
                decoded.add(cand["dtype"])
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the next candidate runs
            status = "oom" if is_out_of_memory(exc) or exc.__class__.__name__ == "OutOfMemory" else "crashed"
            result = {"status": status, "detail": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        gc.collect()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
