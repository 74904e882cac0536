"""The torch backend's device, dtype and memory helpers, and its tensor encodings.

Which device torch can train on here, the dtypes it trains in, the cap on what training may
allocate, the process's resident peak (read and reset through /proc on Linux), and tensors
to numpy or text and back.
"""

from __future__ import annotations

import base64
import contextlib

import numpy as np
import torch

from localtrain.errors import LocaltrainError

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LocaltrainError(
            f"--device cuda: PyTorch {torch.__version__} sees no CUDA GPU on this machine"
            f" (built with CUDA: {torch.version.cuda or 'no'}). Use --device cpu, or install a"
            " CUDA build of PyTorch on a machine with an NVIDIA GPU."
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise LocaltrainError(
            f"--device mps: PyTorch {torch.__version__} has no MPS device here (it needs Apple"
            " silicon and macOS 12.3 or newer). Use --device cpu."
        )
    return device


def check_dtype(dtype: str) -> str:
    if dtype not in TORCH_DTYPES:
        raise LocaltrainError(
            f"train.dtype = {dtype}: the torch backend trains in {', '.join(TORCH_DTYPES)}; the planner"
            " decides between them (train.dtype=auto)."
        )
    return dtype


def _reset_peak_rss() -> None:
    """Start the process's resident high-water mark (VmHWM) afresh, where Linux allows it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back first
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    """The resident high-water mark since the last reset (0 where /proc is unavailable)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    # A copy: a view would change under the next optimizer step.
    return t.float().cpu().numpy().copy() if t.device.type == "cpu" else t.float().cpu().numpy()


def _encode_bytes(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _decode_bytes(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def fresh_adamw_state(opt: torch.optim.Optimizer, opt_step: int) -> None:
    """Give every parameter an AdamW state at `opt_step` with zero moments, for a checkpoint's
    moments to be copied into (the step counter where the fused kernels keep it)."""
    fused = bool(opt.defaults.get("fused"))
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p] = {
                "step": torch.tensor(float(opt_step), dtype=torch.float32, device=p.device if fused else "cpu"),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }


def cap_memory(device: str, limit_bytes: int) -> None:
    """Cap what training may allocate on `device`: allocations beyond it fail as out-of-memory.

    CUDA and MPS cap their caching allocators. On a CPU the process's address space is
    capped at what it maps now plus what the budget leaves beyond its resident memory, so
    the run backs off (or stops) instead of swapping the machine.
    """
    if device == "cpu":
        import resource

        import psutil

        info = psutil.Process().memory_info()
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = info.vms + max(0, limit_bytes - info.rss)
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    elif device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total))
    elif device == "mps":
        total = torch.mps.recommended_max_memory()
        torch.mps.set_per_process_memory_fraction(min(2.0, limit_bytes / total))
