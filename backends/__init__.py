"""Training backends behind one protocol (`base.Backend`): torch (cpu, cuda, mps) and MLX.

This registry is the only way in: the runner, the planner's probe, `sample` and `eval`
reach a backend by name here and never import a framework themselves.
"""

from __future__ import annotations

import contextlib

from localtrain.backends.base import Backend
from localtrain.plan import RunPlan

NAMES = ("torch", "mlx")


def backend_class(name: str) -> type[Backend]:
    """The backend class for a name: "torch" or "mlx"."""
    if name == "mlx":
        from localtrain.backends.mlx_backend import MLXBackend

        return MLXBackend
    if name == "torch":
        from localtrain.backends.torch_backend import TorchBackend

        return TorchBackend
    raise ValueError(f"no backend named {name!r}; the backends are {', '.join(NAMES)}")


def preload(name: str) -> None:
    """Import a backend's framework, and what its first training step imports, ahead of use (the
    run does it while the tuner's measuring process compiles); a failure is left to that use."""
    with contextlib.suppress(Exception):  # the run's own import reports it
        backend_class(name)
        if name == "torch":
            import torch._dynamo  # noqa: F401 - torch's optimizers import it when first built


def make_backend(plan: RunPlan) -> Backend:
    """The backend a plan chose, with its device, dtype, threads and compile (sharded by FSDP
    when the plan says so)."""
    cls = backend_class(plan.backend)
    if plan.parallel == "fsdp":
        from localtrain.backends.torch_fsdp import FSDPBackend

        cls = FSDPBackend
    return cls(plan.device, plan.dtype, plan.threads, plan.compile)
