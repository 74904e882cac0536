"""Measure one shape's training-step peak memory and speed, in this process.

`python -m localtrain.backends.calibrate SPEC_JSON` builds the backend and the model the
spec describes, runs five optimizer steps on random tokens at the spec's micro-batch
size, and prints one JSON line: the peak bytes (CPU: the process's peak RSS; CUDA:
max_memory_allocated; MPS: the largest driver allocation seen; MLX: its peak memory)
and the median tokens/s of the last three steps. One subprocess per micro-batch size: a peak RSS
belongs to a process, and a Metal out-of-memory kills it outright.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import numpy as np

from localtrain.config import ModelConfig, TrainConfig


def peak_bytes(backend, sampled: int) -> int:
    if backend.device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    if backend.device in ("mps", "mlx"):
        return sampled
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def measure(spec: dict) -> dict:
    from localtrain.runner import backend_class

    model = ModelConfig(**spec["model"])
    backend = backend_class(spec["backend"])(spec["device"], spec["dtype"], 0, "off")
    backend.build(model, spec["vocab_size"], 0)
    backend.configure_optimizer(TrainConfig())
    if spec.get("activation_checkpointing") and hasattr(backend, "set_activation_checkpointing"):
        backend.set_activation_checkpointing(True)
    micro = spec["micro_batch_size"]
    data = np.random.default_rng(0).integers(0, spec["vocab_size"], (micro, model.seq_len + 1)).astype(np.uint16)
    sampled, times = 0, []
    for _ in range(5):
        start = time.perf_counter()
        backend.train_step([(data[:, :-1], data[:, 1:])], 1e-4)
        times.append(time.perf_counter() - start)
        sampled = max(sampled, backend.memory_bytes())
    return {"micro_batch_size": micro, "peak_bytes": peak_bytes(backend, sampled),
            "tokens_per_s": micro * model.seq_len / statistics.median(times[2:])}


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
