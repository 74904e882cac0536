"""Ask torch (and NVML), and mlx, what devices this machine has.

Each function returns plain data and never raises: a library that does not import, or a
device query that fails, becomes an entry under "missing" or "notes".
"""

from __future__ import annotations

from typing import Any


def torch_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"versions": {}, "missing": {}, "notes": [], "gpus": []}
    try:
        import torch
    except ImportError as exc:
        facts["missing"]["torch"] = str(exc)
        return facts
    facts["versions"]["torch"] = torch.__version__
    if torch.version.cuda:
        facts["versions"]["torch.cuda"] = torch.version.cuda
    try:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            major, minor = torch.cuda.get_device_capability(i)
            facts["gpus"].append({
                "index": i, "name": torch.cuda.get_device_name(i), "total_bytes": int(total),
                "free_bytes": int(free), "compute_capability": f"{major}.{minor}",
                "bf16": bool(major >= 8),
            })
    except Exception as exc:  # a broken driver is a fact to report, not a crash
        facts["notes"].append(f"CUDA query failed: {exc}")
    if facts["gpus"]:
        _nvml(facts)
    try:
        if torch.backends.mps.is_available():
            facts["mps_available"] = True
            facts["mps_recommended_max_bytes"] = int(torch.mps.recommended_max_memory())
    except Exception as exc:
        facts["notes"].append(f"MPS query failed: {exc}")
    return facts


def _nvml(facts: dict[str, Any]) -> None:
    """Fill free/total memory from NVML when nvidia-ml-py is installed (it sees other processes)."""
    try:
        import pynvml
    except ImportError:
        return
    try:
        pynvml.nvmlInit()
        facts["versions"]["nvml.driver"] = str(pynvml.nvmlSystemGetDriverVersion())
        for gpu in facts["gpus"]:
            handle = pynvml.nvmlDeviceGetHandleByIndex(gpu["index"])
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpu["free_bytes"], gpu["total_bytes"] = int(info.free), int(info.total)
        pynvml.nvmlShutdown()
    except Exception as exc:
        facts["notes"].append(f"NVML query failed: {exc}")


def mlx_facts(apple_silicon: bool) -> dict[str, Any]:
    """MLX's version and, on Apple silicon, its unified-memory sizes (Metal's device info)."""
    facts: dict[str, Any] = {"versions": {}, "missing": {}, "notes": []}
    try:
        import mlx.core as mx
    except ImportError as exc:
        facts["missing"]["mlx"] = str(exc)
        return facts
    facts["versions"]["mlx"] = getattr(mx, "__version__", "?")
    if not apple_silicon:
        return facts  # the CPU build reports no memory sizes
    try:
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        facts["mlx_memory_bytes"] = int(info.get("memory_size", 0))
        facts["mlx_max_recommended_working_set_bytes"] = int(info.get("max_recommended_working_set_size", 0))
        facts["versions"]["mlx.device"] = str(info.get("device_name", mx.default_device()))
    except Exception as exc:
        facts["notes"].append(f"MLX device query failed: {exc}")
    return facts
