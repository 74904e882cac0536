"""What this machine has: CPU, RAM, disk, GPUs and unified memory, and which backends import.

`probe()` never fails because a library is missing or a device is absent: each fact is
gathered on its own and a probe that cannot run is recorded as a note.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localtrain.files import nearest_existing


@dataclass
class GPU:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str
    bf16: bool


@dataclass
class Machine:
    """Facts about this machine, as plain data (JSON-serialisable with `to_dict`)."""

    os: str
    arch: str
    python: str
    cpu_model: str
    physical_cores: int
    logical_cores: int
    cpu_flags: list[str]
    cpu_native_bf16: bool
    ram_total_bytes: int
    ram_available_bytes: int
    disk: dict[str, dict[str, int]]
    """Free and total bytes (and the device id) of the filesystem holding runs/ and the cache."""
    gpus: list[GPU] = field(default_factory=list)
    apple_silicon: bool = False
    chip: str = ""
    mps_available: bool = False
    mps_recommended_max_bytes: int = 0
    mlx_memory_bytes: int = 0
    mlx_max_recommended_working_set_bytes: int = 0
    backends: dict[str, str] = field(default_factory=dict)
    """Importable libraries and their versions (torch, its CUDA build, mlx, ...)."""
    missing: dict[str, str] = field(default_factory=dict)
    """Libraries that did not import, with the reason."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def has_cuda(self) -> bool:
        return bool(self.gpus)


def _cpuinfo(name: str) -> str | None:
    """The value of the first /proc/cpuinfo line starting with `name` (None: no such line or file)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1]
    return None


def cpu_flags() -> list[str]:
    return (_cpuinfo("flags") or "").split()


def cpu_model() -> str:
    model = _cpuinfo("model name")
    if model is not None:
        return model.strip()
    if sys.platform == "darwin":
        return _sysctl("machdep.cpu.brand_string")
    return platform.processor() or platform.machine()


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def native_bf16(flags: list[str], apple_silicon: bool) -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX, or Apple silicon's NEON)."""
    return apple_silicon or bool({"avx512_bf16", "amx_bf16"} & set(flags))


def disk_usage(paths: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Free/total bytes where each path lives (its nearest existing parent)."""
    out = {}
    for name, path in paths.items():
        p = nearest_existing(Path(path).expanduser().resolve())
        usage = shutil.disk_usage(p)
        out[name] = {"free": usage.free, "total": usage.total, "device": p.stat().st_dev}
    return out


def probe(runs_dir: Path = Path("runs"), cache_dir: Path | None = None) -> Machine:
    """Inspect this machine. Imports torch/mlx (in backends/) only to ask them about devices."""
    import psutil

    from localtrain.data.paths import cache_root
    from localtrain.config import DataConfig

    cache = cache_dir or cache_root(DataConfig())
    flags = cpu_flags()
    apple = sys.platform == "darwin" and platform.machine() == "arm64"
    vm = psutil.virtual_memory()
    machine = Machine(
        os=f"{platform.system()} {platform.release()}",
        arch=platform.machine(),
        python=platform.python_version(),
        cpu_model=cpu_model(),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        cpu_flags=flags,
        cpu_native_bf16=native_bf16(flags, apple),
        ram_total_bytes=vm.total,
        ram_available_bytes=vm.available,
        disk=disk_usage({"runs": runs_dir, "cache": cache}),
        apple_silicon=apple,
        chip=_sysctl("machdep.cpu.brand_string") if apple else "",
    )
    from localtrain.backends import device_probe

    for facts in (device_probe.torch_facts(), device_probe.mlx_facts(apple)):
        machine.backends.update(facts.get("versions", {}))
        machine.missing.update(facts.get("missing", {}))
        machine.notes.extend(facts.get("notes", []))
        machine.gpus += [GPU(**gpu) for gpu in facts.get("gpus", [])]
        for key in ("mps_available", "mps_recommended_max_bytes", "mlx_memory_bytes",
                    "mlx_max_recommended_working_set_bytes"):
            if key in facts:
                setattr(machine, key, facts[key])
    for name in ("sentencepiece", "safetensors", "numpy", "textual"):
        try:
            module = __import__(name)
            machine.backends[name] = getattr(module, "__version__", "?")
        except ImportError as exc:
            machine.missing[name] = str(exc)
    return machine
