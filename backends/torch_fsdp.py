"""The torch backend with the model sharded over a torchrun job by FSDP2 (`fully_shard`).

Every transformer block is one FSDP unit and the root holds the rest (the tied embedding
and the final norm). Each rank keeps 1/N of the fp32 weights, gradients and AdamW
moments; a block's full parameters exist only while it computes (and while the next one
is prefetched). On a GPU the blocks are gathered in the compute dtype and gradients are
reduced in fp32 (a `MixedPrecisionPolicy`); on a CPU (gloo) the parameters stay fp32 and
autocast casts, as in one process.

State crosses the backend seam as full arrays under the shared names, as for every
other backend, so a checkpoint written here resumes under DDP, in one process or on MLX:
`state_arrays` gathers one parameter at a time onto rank 0, and `load_state_arrays` has
each rank keep its own rows of each full array.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

import numpy as np
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

from localtrain.backends.torch_backend import TorchBackend, TorchDecoder
from localtrain.backends.torch_device import TORCH_DTYPES


# glibc serves allocations from the heap below a threshold that it raises to the size of
# each large block freed; the gathered blocks FSDP frees then stay in the heap, and the
# peak RSS of a CPU rank grew past that of a DDP rank (scripts/bench_fsdp.py). A fixed
# threshold returns every allocation of 4 MiB or more to the system when it is freed.
MMAP_THRESHOLD = 4 << 20


def _return_freed_blocks() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator has its own policy
            M_MMAP_THRESHOLD = -3
            ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class FSDPBackend(TorchBackend):
    """`TorchBackend` whose model state is sharded over the processes of a torchrun job."""

    sharded = True
    """Evaluation, sampling and checkpoints need every rank: each holds part of the model."""

    def __init__(self, device: str = "cpu", dtype: str = "float32", threads: int = 0, compile: bool = False,
                 *, compile_mode: str | None = None) -> None:
        super().__init__(device, dtype, threads, compile, compile_mode=compile_mode)
        self.accumulate_unsharded = False
        if self.device == "cpu":
            _return_freed_blocks()

    def set_accumulation(self, unsharded: bool) -> None:
        """Accumulate micro-batch gradients unsharded and reduce-scatter once a step (the
        planner found they fit), or reduce-scatter after every micro-batch."""
        self.accumulate_unsharded = unsharded

    def _training_module(self) -> torch.nn.Module:
        # The runner refuses run.parallel = fsdp outside a torchrun job, with the reason.
        assert self.dist is not None, "set_distributed() comes before build()"
        model = self.model
        mesh = init_device_mesh(self.device, (self.dist.world_size,))
        policy = MixedPrecisionPolicy()
        if self.device == "cuda" and self.dtype != "float32":
            # Blocks gathered and computed in 16 bits, gradients reduced (and the sharded
            # masters kept) in fp32. The rope tables passed to each block stay fp32.
            policy = MixedPrecisionPolicy(param_dtype=TORCH_DTYPES[self.dtype], reduce_dtype=torch.float32,
                                          cast_forward_inputs=False)
        # Parameters are initialised on the host (the same values as one process) and each
        # block moves to the device as it is sharded: the whole model is never on one device.
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        # Evaluation and generation enter the model through these methods, not forward:
        # each must gather the root's parameters first.
        for method in ("token_losses", "hidden", "logits"):
            register_fsdp_forward_method(model, method)
        # The compiler breaks its graphs at FSDP's hooks: each block compiles on its own.
        return self._compiled(model)

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        root = self.model
        if self.accumulate_unsharded:
            root.set_requires_gradient_sync(last)
        # The root's parameters are gathered for the whole forward and backward anyway:
        # keeping them between micro-batches saves a gather and costs no extra peak.
        root.set_reshard_after_backward(last, recurse=False)
        return contextlib.nullcontext()

    def _clip_gradients(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        norm = super()._clip_gradients(params, max_norm)
        # The norm over sharded gradients comes back as a DTensor; the step reports its plain value.
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def configure_optimizer(self, train) -> None:
        super().configure_optimizer(train)
        if self.scaler is not None:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            # Every rank must skip the same overflowing step: this scaler all-reduces its inf check.
            self.scaler = ShardedGradScaler(self.device)

    def _fused_optimizer(self) -> bool:
        # The sharded scaler's overflow flag does not fit the fused AdamW kernel.
        return super()._fused_optimizer() and self.dtype != "float16"

    # Evaluation and generation run under no_grad rather than inference mode: buffers
    # FSDP allocates in inference mode could not be written by a later training step.

    def token_losses(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return TorchBackend.token_losses.__wrapped__(self, x, y)

    def decoder(self, dtype: str | None = None) -> TorchDecoder:
        assert self.model is not None
        return _ShardedDecoder(self, dtype)

    # -- state: every rank must call state_arrays and load_state_arrays ---------------

    def _whole(self, t: torch.Tensor) -> torch.Tensor | None:
        """Gathered from every rank, copied out on rank 0 only (the others return empty dicts).

        Beyond the arrays rank 0 returns, a rank holds at most one full parameter at a time
        (the largest is the embedding or a block's gate/up matrix).
        """
        full = t.full_tensor() if isinstance(t, DTensor) else t
        return full if self.dist.is_main else None

    def _assign(self, t: torch.Tensor, full: torch.Tensor) -> None:
        """Keep this rank's rows of the full array (every rank is handed the full arrays)."""
        # Each rank slices its own rows out of the full array: no communication.
        mine = distribute_tensor(full, t.device_mesh, t.placements, src_data_rank=None)
        t.to_local().copy_(mine.to_local())


class _ShardedDecoder(TorchDecoder):
    """The torch decoder under no_grad rather than inference mode (see FSDPBackend). Every
    rank decodes the same tokens: each forward gathers the blocks from all of them."""

    def start(self, context: list[int]) -> np.ndarray:
        with torch.no_grad():
            return TorchDecoder.start.__wrapped__(self, context)

    def extend(self, token: int) -> np.ndarray:
        with torch.no_grad():
            return TorchDecoder.extend.__wrapped__(self, token)
