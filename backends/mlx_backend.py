"""The MLX backend: Metal on Apple silicon, MLX's CPU build elsewhere.

The same model, optimizer and checkpoint as the torch backend. AdamW is written out
here so that it is torch's, step for step: decoupled decay p *= 1 - lr*wd on matrices
only, bias-corrected moments, denominator sqrt(v_hat) + eps, global-norm clipping
before the update, and gradient accumulation as the mean over micro-batches.

The training step is compiled with `mx.compile`. Dropout never draws from MLX's global
generator: the backend holds one key, splits it each step and passes the halves into
the compiled step, so the key is the whole random state a checkpoint needs.
"""

from __future__ import annotations

import contextlib
import os
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from localtrain.backends import mlx_model
from localtrain.backends.base import (
    MOMENT_SUFFIXES, OutOfMemory, StepResult, check_moments, check_weights, is_out_of_memory, matmul_peak,
)
from localtrain.config import ModelConfig, TrainConfig
from localtrain.errors import LocaltrainError

MX_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}


def resolve_device(device: str) -> mx.Device:
    """"auto" and "mlx" take MLX's default device (its GPU when it has one); "cpu" forces the CPU."""
    if device == "cpu":
        return mx.cpu
    if device in ("auto", "mlx"):
        return mx.default_device()
    has_gpu = mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available())
    if device in ("mps", "cuda", "gpu") and has_gpu:
        return mx.gpu
    raise LocaltrainError(
        f"--device {device}: MLX {mx.__version__} has no GPU here (it uses Metal on Apple silicon, or CUDA in"
        " its CUDA build). Use --device cpu with --backend mlx, or --backend torch."
    )


def check_dtype(dtype: str) -> str:
    if dtype not in MX_DTYPES:
        raise LocaltrainError(
            f"train.dtype = {dtype}: the MLX backend trains in float32 or bfloat16 (float16 would need loss"
            " scaling, and Apple silicon computes bfloat16 natively). Use --set train.dtype=bfloat16."
        )
    return dtype


def _is_mlx_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return is_out_of_memory(exc) or "unable to allocate" in text or "attempting to allocate" in text


class MLXBackend:
    name = "mlx"

    def __init__(self, device: str = "auto", dtype: str = "float32", threads: int = 0, compile: bool = True) -> None:
        self.mx_device = resolve_device(device)
        mx.set_default_device(self.mx_device)
        # The planner and calibration know this backend's device as "mlx"; where it runs
        # (gpu or cpu) is in `where` and in the peak key.
        self.device = "mlx"
        self.where = "gpu" if self.mx_device == mx.gpu else "cpu"
        self.dtype = check_dtype(dtype)
        self.compile = compile
        self.threads = 0  # MLX sizes its own CPU thread pool
        self.cfg: ModelConfig | None = None
        self.params: mlx_model.Params = {}
        self.moments: dict[str, mlx_model.Params] | None = None  # {"exp_avg": ..., "exp_avg_sq": ...}
        self.opt_step = 0
        self.train_cfg: TrainConfig | None = None
        self.checkpointing = False
        self.key = mx.random.key(0)

    # -- model and optimizer ------------------------------------------------------------

    def build(self, model: ModelConfig, vocab_size: int, seed: int) -> None:
        self.cfg, self.vocab_size = model, vocab_size
        self.rows = model.vocab_rows(vocab_size)
        self.shapes = mlx_model.param_shapes(model, self.rows)
        self.params = mlx_model.init_params(model, self.rows, seed)
        mx.eval(self.params)
        # Dropout's key, apart from the initialisation's (as torch seeds seed + 1).
        self.key = mx.random.key(seed + 1)
        self._compile()

    def num_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes.values())

    def configure_optimizer(self, train: TrainConfig) -> None:
        self.train_cfg = train
        # Matrices decay; norms (1-D) and the tied embedding do not.
        self.decayed = {n for n, s in self.shapes.items() if len(s) >= 2 and n != mlx_model.EMBED}
        self.moments, self.opt_step = None, 0
        self._compile()

    @staticmethod
    def check_device(device: str) -> str:
        resolve_device(device)
        return "mlx"

    def set_distributed(self, dist) -> None:
        raise LocaltrainError(
            "Data-parallel training (--nproc) runs on torch's engine: start it with --backend torch. The"
            " checkpoints move between backends, so a run can continue on MLX afterwards."
        )

    def set_activation_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them."""
        self.checkpointing = on
        self._compile()

    def reset_peak_memory(self) -> None:
        mx.reset_peak_memory()

    def peak_memory_bytes(self) -> int:
        return int(mx.get_peak_memory())

    def clear_compile_cache(self) -> None:
        """Nothing to forget: each backend compiles its own step functions, so a new one compiles anew."""

    def set_measurement_cache(self, directory: Path) -> None:
        """Nothing to keep: this backend times nothing of its own."""

    def set_memory_limit(self, limit_bytes: int) -> None:
        """Cap MLX's allocator at the budget; on Metal also keep that much wired (resident)."""
        mx.set_memory_limit(int(limit_bytes))
        if mx.metal.is_available():
            info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
            wired = min(int(limit_bytes), int(info.get("max_recommended_working_set_size", limit_bytes)))
            with contextlib.suppress(RuntimeError, ValueError):  # above the system's wired limit: MLX keeps its default
                mx.set_wired_limit(wired)

    def _compile(self) -> None:
        if self.cfg is None:
            return
        dtype = MX_DTYPES[self.dtype]
        wrap = mx.compile if self.compile else (lambda f: f)
        cfg, ckpt = self.cfg, self.checkpointing

        def grads(params, x, y, key, scale):
            fn = partial(mlx_model.loss, x=x, y=y, cfg=cfg, dtype=dtype, key=key, checkpoint=ckpt)
            value, g = mx.value_and_grad(fn)(params)
            return value, {k: v * scale for k, v in g.items()}

        def grads_eval(params, x, y, scale):  # no dropout key at all when dropout is off
            return grads(params, x, y, None, scale)

        self._grads = wrap(grads if cfg.dropout else grads_eval)
        self._update = wrap(self._adamw) if self.train_cfg is not None else None
        self._losses = wrap(partial(mlx_model.token_losses, cfg=cfg, dtype=dtype))

    def _adamw(self, params, grads, exp_avg, exp_avg_sq, h):
        """torch.optim.AdamW after clip_grad_norm_, on float32 arrays; h holds this step's scalars."""
        t = self.train_cfg
        norms = mx.stack([mx.sqrt(mx.sum(g * g)) for g in grads.values()])
        norm = mx.sqrt(mx.sum(norms * norms))
        coef = mx.minimum(h["max_norm"] / (norm + 1e-6), 1.0)
        new_p, new_m, new_v = {}, {}, {}
        for name, p in params.items():
            g = grads[name] * coef
            m = exp_avg[name] + (1.0 - t.beta1) * (g - exp_avg[name])
            v = exp_avg_sq[name] * t.beta2 + (1.0 - t.beta2) * (g * g)
            if name in self.decayed:
                p = p * h["decay"]
            denom = mx.sqrt(v) / h["bc2_sqrt"] + t.eps
            new_p[name], new_m[name], new_v[name] = p - h["step_size"] * (m / denom), m, v
        return new_p, new_m, new_v, norm

    # -- training and evaluation --------------------------------------------------------

    def train_step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], lr: float) -> StepResult:
        try:
            return self._train_step(micro_batches, lr)
        except (RuntimeError, MemoryError, ValueError) as exc:
            if not _is_mlx_oom(exc):
                raise
            mx.clear_cache()
            # Nothing was assigned: the parameters and moments are those before the step.
            raise OutOfMemory(str(exc).splitlines()[0]) from None

    def _train_step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], lr: float) -> StepResult:
        t = self.train_cfg
        assert t is not None and self._update is not None
        mx.reset_peak_memory()
        n = len(micro_batches)
        scale = mx.array(1.0 / n, dtype=mx.float32)
        if self.cfg.dropout:
            self.key, step_key = mx.random.split(self.key)
            keys = mx.random.split(step_key, n)
        total, acc = mx.array(0.0), None
        for i, (x, y) in enumerate(micro_batches):
            xs, ys = mx.array(x.astype(np.int32)), mx.array(y.astype(np.int32))
            if self.cfg.dropout:
                value, g = self._grads(self.params, xs, ys, keys[i], scale)
            else:
                value, g = self._grads(self.params, xs, ys, scale)
            total = total + value
            acc = g if acc is None else {k: acc[k] + g[k] for k in acc}
            if n > 1:
                mx.eval(total, acc)  # bound the graph (and memory) to one micro-batch
        if self.moments is None:
            zeros = {k: mx.zeros_like(p) for k, p in self.params.items()}
            self.moments = {"exp_avg": zeros, "exp_avg_sq": dict(zeros)}
        step = self.opt_step + 1
        bc1, bc2 = 1.0 - t.beta1**step, 1.0 - t.beta2**step
        scalars = {
            "max_norm": t.grad_clip if t.grad_clip > 0 else float("inf"),
            "decay": 1.0 - lr * t.weight_decay,
            "step_size": lr / bc1,
            "bc2_sqrt": bc2**0.5,
        }
        h = {k: mx.array(v, dtype=mx.float32) for k, v in scalars.items()}
        params, m, v, norm = self._update(self.params, acc, self.moments["exp_avg"], self.moments["exp_avg_sq"], h)
        mean = total / n
        mx.eval(params, m, v, norm, mean)
        self.params, self.moments, self.opt_step = params, {"exp_avg": m, "exp_avg_sq": v}, step
        return StepResult(loss=mean.item(), grad_norm=norm.item())

    def token_losses(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = self._losses(self.params, mx.array(x.astype(np.int32)), mx.array(y.astype(np.int32)))
        return np.array(out, dtype=np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Float32 scores over the real vocabulary for token ids x: (B, T) -> (B, T, vocab)."""
        dtype = MX_DTYPES[self.dtype]
        h = mlx_model.hidden(self.params, mx.array(x.astype(np.int32)), self.cfg, dtype)
        return np.array(mlx_model.logits(self.params, h, dtype)[..., : self.vocab_size])

    def decoder(self, dtype: str | None = None) -> MLXDecoder:
        assert self.cfg is not None
        return MLXDecoder(self, dtype)

    def memory_bytes(self) -> int:
        """MLX's peak allocation during the latest step (or since start), in bytes."""
        return int(max(mx.get_peak_memory(), mx.get_active_memory()))

    # -- state --------------------------------------------------------------------------

    def state_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        weights = {k: np.array(v, dtype=np.float32) for k, v in self.params.items()}
        moments = {f"{name}.{suffix}": np.array(self.moments[suffix][name], dtype=np.float32)
                   for name in self.params for suffix in MOMENT_SUFFIXES} if self.moments else {}
        return weights, moments

    def load_state_arrays(
        self, weights: dict[str, np.ndarray], moments: dict[str, np.ndarray] | None, opt_step: int
    ) -> None:
        check_weights(self.shapes, weights)
        params = {k: mx.array(np.asarray(weights[k], dtype=np.float32)) for k in self.shapes}
        loaded = None
        if moments:
            check_moments(self.shapes, moments)
            loaded = {s: {k: mx.array(np.asarray(moments[f"{k}.{s}"], dtype=np.float32)) for k in self.shapes}
                      for s in MOMENT_SUFFIXES}
        mx.eval(params, loaded)
        # A weights-only load starts the optimizer afresh.
        self.params, self.moments, self.opt_step = params, loaded, int(opt_step) if loaded else 0

    def rng_state(self) -> dict[str, Any]:
        return {"mlx_key": [int(v) for v in np.array(self.key).tolist()]}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        # A checkpoint from another backend holds no MLX key: dropout then continues from
        # this run's own seed-derived key.
        if "mlx_key" in state:
            self.key = mx.array(np.array(state["mlx_key"], dtype=np.uint32))

    def extra_state(self) -> dict[str, Any]:
        return {}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        pass  # float32 and bfloat16 need no loss scale

    # -- speed --------------------------------------------------------------------------

    def measure_peak_flops(self) -> float:
        dtype = MX_DTYPES[self.dtype]
        key = mx.random.key(0)  # never the training key

        def operands(n: int) -> tuple[mx.array, mx.array]:
            return tuple(mx.random.normal((n, n), key=k).astype(dtype) for k in mx.random.split(key))

        def run(a: mx.array, b: mx.array, times: int) -> None:
            for _ in range(times):
                mx.eval(a @ b)

        sizes = (256, 512, 1024) if self.where == "cpu" else (2048, 4096, 8192)
        return matmul_peak(sizes, operands, run)

    def peak_key(self) -> str:
        where = f"cpu{os.cpu_count()}" if self.where == "cpu" else str(mx.default_device())
        return f"mlx-{mx.__version__}-{where}-{self.dtype}"


class MLXDecoder:
    """The MLX model's scores for the next token, from its key/value cache (see base.Decoder)."""

    def __init__(self, backend: MLXBackend, dtype: str | None = None) -> None:
        self.backend, self.cfg = backend, backend.cfg
        self.dtype = MX_DTYPES[check_dtype(dtype or backend.dtype)]
        self.window, self.length = self.cfg.seq_len, 0
        self.caches: list = []

    def start(self, context: list[int]) -> np.ndarray:
        self.caches = [[] for _ in range(self.cfg.n_layer)]
        self.length = len(context)
        return self._scores(context, 0)

    def extend(self, token: int) -> np.ndarray:
        self.length += 1
        return self._scores([token], self.length - 1)

    def _scores(self, ids: list[int], start: int) -> np.ndarray:
        params = self.backend.params
        h = mlx_model.hidden(params, mx.array([ids], dtype=mx.int32), self.cfg, self.dtype, start, self.caches)
        return np.array(mlx_model.logits(params, h[:, -1], self.dtype)[0, : self.backend.vocab_size], dtype=np.float32)
