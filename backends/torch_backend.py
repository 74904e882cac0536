"""The PyTorch backend for cpu, cuda and mps."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from localtrain.backends import torch_attention
from localtrain.backends.base import (
    MOMENT_SUFFIXES, OutOfMemory, StepResult, check_moments, check_weights, is_out_of_memory, loss_chunk_tokens,
    matmul_peak,
)
from localtrain.backends.torch_device import (
    TORCH_DTYPES, _decode_bytes, _encode_bytes, _peak_rss, _reset_peak_rss, _to_numpy, cap_memory, check_dtype,
    fresh_adamw_state, resolve_device,
)
from localtrain.backends.torch_model import LayerCaches, LlamaLM, grouped_layout, rows_shape, shared_layout
from localtrain.config import ModelConfig, TrainConfig


class TorchBackend:
    name = "torch"

    def __init__(self, device: str = "cpu", dtype: str = "float32", threads: int = 0, compile: bool = False,
                 *, compile_mode: str | None = None) -> None:
        self.device = resolve_device(device)
        self.dtype = check_dtype(dtype)
        self.compile = compile
        # torch.compile's mode ("max-autotune-no-cudagraphs", "reduce-overhead"); None: its default.
        self.compile_mode = compile_mode
        # The measured attention kernel order per (micro-batch, dtype) on CUDA, and on a CPU in 16 bits.
        self.attention = torch_attention.Choices()
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model: LlamaLM | None = None
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.dist = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.grad_clip = 0.0

    check_device = staticmethod(resolve_device)

    # -- model and optimizer ------------------------------------------------------------

    def set_distributed(self, dist) -> None:
        """Train data-parallel in this torchrun job (call before `build`)."""
        self.dist = dist
        self.threads = torch.get_num_threads()

    def build(self, model: ModelConfig, vocab_size: int, seed: int) -> None:
        self.model = LlamaLM(model, vocab_size)
        self.model.init_weights(torch.Generator().manual_seed(seed))
        self.train_model = self._training_module()
        # On a GPU the output head's loss runs in chunks (torch_loss): the full logits would
        # be the largest tensor of the step.
        self.model.loss_chunk = loss_chunk_tokens(self.model.model.embed_tokens.num_embeddings, self.device)
        self.layout = shared_layout(self.model)
        # MPS lacks some complex kernels, and the compiler cannot fuse complex arithmetic;
        # real arithmetic gives the same rotation there.
        self.model.complex_rope = self.device != "mps" and not self.compile
        # Dropout draws from the default generators, which a checkpoint saves; each rank
        # of a data-parallel job draws its own masks.
        torch.manual_seed(seed + 1 + (self.dist.rank if self.dist is not None else 0))

    def _training_module(self) -> torch.nn.Module:
        """Move the model to the device; the module the training forward runs."""
        self.model.to(self.device)
        train_model: torch.nn.Module = self.model
        if self.dist is not None and self.dist.world_size > 1:
            # Gradients are averaged across ranks in the backward pass; the rope tables
            # are the same everywhere, so buffers need no broadcast.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if self.device == "cuda" else None,
                broadcast_buffers=False,
            )
            train_model = self.ddp
        return self._compiled(train_model)

    def _compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        """The training forward (and with it the backward) compiled for the run's one micro-batch
        shape when the plan says so; evaluation and generation, whose shapes change token by
        token, run the same module eagerly."""
        if not self.compile:
            return module
        torch_attention.cache_upcast_graphs()
        return torch.compile(module, dynamic=False, mode=self.compile_mode)

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Around one micro-batch's backward: under DDP gradients are averaged once, after the last."""
        return contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()

    def _clip_gradients(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm to `max_norm`; the norm before clipping."""
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def num_params(self) -> int:
        assert self.model is not None
        return sum(p.numel() for p in self.model.parameters())

    def configure_optimizer(self, train: TrainConfig) -> None:
        assert self.model is not None
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # Matrices decay; norms (1-D) and the tied embedding do not.
            (decay if p.dim() >= 2 and "embed_tokens" not in name else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": train.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = self._fused_optimizer()
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=train.lr,
            betas=(train.beta1, train.beta2),
            eps=train.eps,
            fused=fused,
            foreach=None if fused else True,
        )
        self.grad_clip = train.grad_clip
        if self.dtype == "float16":
            self.scaler = torch.amp.GradScaler(self.device)

    def _fused_optimizer(self) -> bool:
        return self.device in ("cpu", "cuda")

    def set_activation_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them."""
        assert self.model is not None
        self.model.checkpointing = on

    def set_memory_limit(self, limit_bytes: int) -> None:
        """Cap the memory training may take (torch_device.cap_memory)."""
        cap_memory(self.device, limit_bytes)

    def _autocast(self, dtype: str | None = None) -> contextlib.AbstractContextManager:
        dtype = dtype or self.dtype
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=TORCH_DTYPES[dtype])

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        if self.device == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _attention(self, micro_batch_size: int) -> contextlib.AbstractContextManager:
        """The fastest way to run attention for this micro-batch, measured the first time: on CUDA
        the fused kernel; on a CPU in 16 bits, whether attention runs in float32."""
        model = self.model
        measured = self.device == "cuda" or (self.device == "cpu" and self.dtype != "float32")
        if not measured or model.cfg.dropout:
            return contextlib.nullcontext()
        cfg = model.cfg
        choice = self.attention.of((micro_batch_size, cfg.n_head, cfg.seq_len, cfg.head_dim), self.dtype, self.device)
        for layer in model.model.layers:
            layer.self_attn.upcast = choice.upcast
        return choice.context()

    # -- training and evaluation --------------------------------------------------------

    def train_step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], lr: float) -> StepResult:
        try:
            return self._train_step(micro_batches, lr)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            # Drop what the failed step accumulated so a retry starts clean.
            self.optimizer.zero_grad(set_to_none=True)
            if self.device == "cuda":
                torch.cuda.empty_cache()
            elif self.device == "mps":
                torch.mps.empty_cache()
            raise OutOfMemory(str(exc).splitlines()[0]) from None

    def _train_step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], lr: float) -> StepResult:
        model, opt = self.train_model, self.optimizer
        assert model is not None and opt is not None
        model.train()
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        # Every micro-batch is copied (from pinned memory, without waiting) before the first
        # forward, so no copy waits on a backward pass.
        inputs = [(self._tensor(x), self._tensor(y)) for x, y in micro_batches]
        for i, (x, y) in enumerate(inputs):
            with self._gradient_sync(last=i == n - 1), self._attention(len(x)):
                with self._autocast():
                    loss = model(x, y)
                scaled = loss / n
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.detach()
        if self.scaler:
            self.scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"]]
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = self._clip_gradients(params, max_norm)
        for group in opt.param_groups:
            group["lr"] = lr
        skipped = False
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.step(opt)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        # One wait for the device, for both numbers.
        loss, grad_norm = torch.stack([total / n, norm.to(total.dtype)]).tolist()
        return StepResult(loss=loss, grad_norm=grad_norm, skipped=skipped)

    @torch.inference_mode()
    def token_losses(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        assert self.model is not None
        self.model.eval()
        with self._autocast():
            losses = self.model.token_losses(self._tensor(x), self._tensor(y))
        return losses.float().cpu().numpy()

    def decoder(self, dtype: str | None = None) -> TorchDecoder:
        assert self.model is not None
        return TorchDecoder(self, dtype)

    def reset_peak_memory(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        elif self.device == "cpu":
            _reset_peak_rss()
        self._peak_sampled = self.memory_bytes()

    def peak_memory_bytes(self) -> int:
        if self.device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        if self.device == "cpu" and (peak := _peak_rss()):
            return peak
        # MPS (and a CPU without /proc): the most seen after a step.
        return max(getattr(self, "_peak_sampled", 0), self.memory_bytes())

    def clear_compile_cache(self) -> None:
        """Forget the compiled code held in memory (the compiler's on-disk cache stays), so the
        next compile costs what it costs a new process."""
        torch._dynamo.reset()

    def set_measurement_cache(self, directory: Path) -> None:
        self.attention.kept_in = directory

    def memory_bytes(self) -> int:
        if self.device == "cuda":
            return int(torch.cuda.memory_allocated())
        if self.device == "mps":
            return int(torch.mps.driver_allocated_memory())
        import psutil

        return int(psutil.Process().memory_info().rss)

    # -- state --------------------------------------------------------------------------

    def state_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Float32 copies under the shared names, one parameter (then its moments) at a time."""
        weights: dict[str, np.ndarray] = {}
        moments: dict[str, np.ndarray] = {}
        state = self.optimizer.state if self.optimizer else {}
        with torch.no_grad():
            for p, entries in grouped_layout(self.layout):
                tensors = {"": p}
                if p in state and "exp_avg" in state[p]:
                    tensors.update({f".{s}": state[p][s] for s in MOMENT_SUFFIXES})
                for suffix, t in tensors.items():
                    full = self._whole(t)
                    if full is not None:
                        out = moments if suffix else weights
                        for name, rows in entries:
                            out[name + suffix] = _to_numpy(full[rows])
                    del full  # before the next one is taken
        return weights, moments

    def _whole(self, t: torch.Tensor) -> torch.Tensor | None:
        """A parameter or moment whole, for `state_arrays` to copy out (None: none kept here)."""
        return t

    def load_state_arrays(
        self, weights: dict[str, np.ndarray], moments: dict[str, np.ndarray] | None, opt_step: int
    ) -> None:
        shapes = {name: rows_shape(p.shape, rows) for name, (p, rows) in self.layout.items()}
        check_weights(shapes, weights)
        opt = self.optimizer
        restore = opt is not None and bool(moments)
        if restore:
            check_moments(shapes, moments)  # before anything is replaced
            fresh_adamw_state(opt, opt_step)
        with torch.no_grad():
            for p, entries in grouped_layout(self.layout):
                targets = {"": (p, weights)}
                if restore:
                    targets.update({f".{s}": (opt.state[p][s], moments) for s in MOMENT_SUFFIXES})
                for suffix, (t, arrays) in targets.items():
                    full = torch.empty(p.shape, dtype=torch.float32)
                    for name, rows in entries:
                        full[rows] = torch.from_numpy(np.asarray(arrays[name + suffix], dtype=np.float32))
                    self._assign(t, full)
                    del full

    def _assign(self, t: torch.Tensor, full: torch.Tensor) -> None:
        """Set a parameter or moment from its whole float32 array (on the host)."""
        t.copy_(full)

    def rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch_cpu": _encode_bytes(torch.get_rng_state())}
        if self.device == "cuda":
            state["torch_cuda"] = [_encode_bytes(s) for s in torch.cuda.get_rng_state_all()]
        if self.device == "mps":
            state["torch_mps"] = _encode_bytes(torch.mps.get_rng_state())
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        if "torch_cpu" in state:
            torch.set_rng_state(_decode_bytes(state["torch_cpu"]))
        if self.device == "cuda" and "torch_cuda" in state:
            torch.cuda.set_rng_state_all([_decode_bytes(s) for s in state["torch_cuda"]])
        if self.device == "mps" and "torch_mps" in state:
            torch.mps.set_rng_state(_decode_bytes(state["torch_mps"]))

    def extra_state(self) -> dict[str, Any]:
        # The attention measured: a resumed run computes the same way, whatever its own timing says.
        state: dict[str, Any] = {"attention": {f"{m}/{d}": asdict(c) for (m, d), c in self.attention.items()}}
        return {**state, "grad_scaler": self.scaler.state_dict()} if self.scaler else state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if self.scaler and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        for key, choice in state.get("attention", {}).items():
            micro, dtype = key.split("/")
            self.attention[(int(micro), dtype)] = torch_attention.AttentionChoice(**choice)

    # -- speed --------------------------------------------------------------------------

    def measure_peak_flops(self) -> float:
        dtype = TORCH_DTYPES[self.dtype]
        # A private generator: the default one drives dropout and is part of the run's state.
        gen = torch.Generator().manual_seed(0)
        sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(self.device, lambda: None)

        def operands(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            return tuple(torch.randn(n, n, generator=gen).to(self.device, dtype) for _ in range(2))

        def run(a: torch.Tensor, b: torch.Tensor, times: int) -> None:
            for _ in range(times):
                a @ b
            sync()

        sizes = (512, 1024, 2048) if self.device == "cpu" else (2048, 4096, 8192)
        return matmul_peak(sizes, operands, run)

    def peak_key(self) -> str:
        if self.device == "cuda":
            where = torch.cuda.get_device_name()
        elif self.device == "mps":
            where = "mps"
        else:
            where = f"cpu{os.cpu_count()}-{self.threads}threads"
        return f"torch-{torch.__version__}-{where}-{self.dtype}"


class TorchDecoder:
    """The torch model's scores for the next token, from its key/value cache (see base.Decoder)."""

    def __init__(self, backend: TorchBackend, dtype: str | None = None) -> None:
        self.backend, self.model, self.dtype = backend, backend.model, dtype
        self.model.eval()
        self.window, self.length = self.model.cfg.seq_len, 0
        self.caches = LayerCaches(0)

    @torch.inference_mode()
    def start(self, context: list[int]) -> np.ndarray:
        self.caches = LayerCaches(len(self.model.model.layers))
        self.length = len(context)
        return self._scores(torch.tensor([context], device=self.backend.device), 0)

    @torch.inference_mode()
    def extend(self, token: int) -> np.ndarray:
        self.length += 1
        return self._scores(torch.tensor([[token]], device=self.backend.device), self.length - 1)

    def _scores(self, ids: torch.Tensor, start: int) -> np.ndarray:
        with self.backend._autocast(self.dtype):
            h = self.model.hidden(ids, start, self.caches)[:, -1]
            logits = self.model.logits(h)[0, : self.model.vocab_size]
        return logits.float().cpu().numpy()
