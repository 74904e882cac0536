"""The backend protocol: everything the training loop asks of a framework.

The loop in `localtrain.train` never imports torch or mlx. It hands a backend numpy
token arrays and a learning rate, and gets back Python floats and numpy arrays. State
crosses the seam as plain arrays under the shared parameter names (the Hugging Face
Llama names), so a checkpoint written by one backend loads in another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from localtrain.config import ModelConfig, TrainConfig

# Optimizer moments are stored as "<parameter name>.exp_avg" / ".exp_avg_sq".
MOMENT_SUFFIXES = ("exp_avg", "exp_avg_sq")


class OutOfMemory(Exception):
    """A training step ran out of device (or host) memory; gradients were cleared.

    The loop answers by halving the micro-batch and doubling the accumulation.
    """


def check_weights(expected: dict[str, tuple[int, ...]], weights: dict[str, np.ndarray]) -> None:
    """Refuse weights that do not fit the model, naming every tensor that is missing,
    unknown or of another shape (with both shapes)."""
    from localtrain.errors import CheckpointError

    missing = [f"{k} {expected[k]}" for k in expected if k not in weights]
    unknown = [f"{k} {tuple(weights[k].shape)}" for k in weights if k not in expected]
    problems = [f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                for kind, names in (("missing", missing), ("unknown", unknown)) if names]
    for name, want in expected.items():
        if name in weights and tuple(weights[name].shape) != tuple(want):
            problems.append(f"{name} has shape {tuple(weights[name].shape)}, the model needs {tuple(want)}")
    if problems:
        raise CheckpointError(
            "The checkpoint's weights do not fit this model: " + "; ".join(problems[:4])
            + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
            + ". It was written for a different model shape or vocabulary; resume with the"
            " run's own config, or start a new run."
        )


def check_moments(shapes: dict[str, tuple[int, ...]], moments: dict[str, np.ndarray]) -> None:
    """Refuse an optimizer state that lacks a moment of some tensor or holds one of another shape."""
    from localtrain.errors import CheckpointError

    for name, shape in shapes.items():
        for suffix in MOMENT_SUFFIXES:
            key = f"{name}.{suffix}"
            if key not in moments:
                raise CheckpointError(f"The checkpoint's optimizer state lacks `{key}`: it is incomplete."
                                      " Resume from an older checkpoint, or delete this one.")
            if tuple(moments[key].shape) != tuple(shape):
                raise CheckpointError(
                    f"The checkpoint's optimizer state `{key}` has shape {tuple(moments[key].shape)}, the model"
                    f" needs {tuple(shape)}: it belongs to another model. Resume from a checkpoint of this run.")


def matmul_peak(sizes: tuple[int, ...], operands: Callable[[int], tuple[Any, Any]],
                run: Callable[[Any, Any, int], None]) -> float:
    """The best n x n matmul rate (FLOP/s) over `sizes`: `operands(n)` makes the two matrices,
    `run(a, b, k)` multiplies them k times and waits for the device. Stops growing n once a
    single product takes over 0.25 s (a slow dtype: larger sizes would only take longer).
    """
    best = 0.0
    for n in sizes:
        a, b = operands(n)
        run(a, b, 1)  # warm-up
        start = time.perf_counter()
        run(a, b, 1)
        single = time.perf_counter() - start
        if single > 0.25:
            return max(best, 2 * n**3 / single)
        iters = max(2, int(0.3 / max(single, 1e-6)))
        start = time.perf_counter()
        run(a, b, iters)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start))
    return best


def loss_chunk_tokens(vocab_rows: int, device: str) -> int:
    """Tokens per chunk of the output head's loss on `device`; 0 where the loss is the plain one.

    On CUDA the loss runs in chunks (torch_loss): a power of two, about 2^29 logits a chunk
    (1 GiB in 16 bits), at least 1,024 tokens. Below that, the per-chunk sum into the head's
    float32 weight gradient (read and written once a chunk) starts to cost more than a
    percent of the step. Elsewhere (the CPU, MPS, MLX) the loss makes the full logits. The
    backend and the planner's memory model both ask here.
    """
    if device != "cuda":
        return 0
    return max(1024, 1 << max(0, (2**29 // max(1, vocab_rows)).bit_length() - 1))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a framework error means memory ran out (CUDA, MPS, Metal, or the CPU allocator)."""
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or any(
        marker in text
        for marker in ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")
    )


class Decoder(Protocol):
    """Scores for the next token, from a key/value cache: what generation needs of a backend."""

    window: int
    """The longest context the model takes (model.seq_len)."""
    length: int
    """Positions held in the cache now."""

    def start(self, context: list[int]) -> np.ndarray:
        """Forget the cache, run `context` (at most `window` ids) and return the float32 scores over the
        real vocabulary at its last position."""

    def extend(self, token: int) -> np.ndarray:
        """Append one id at the next position and return the scores after it."""


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Mean training loss over the step's micro-batches (nats per token)."""
    grad_norm: float
    """Global gradient norm before clipping."""
    skipped: bool = False
    """True when a float16 loss-scale overflow skipped the update."""


class Backend(Protocol):
    """What the runner, the loop and the planner's probe ask of a framework.

    Constructed as `Backend(device, dtype, threads, compile)` with the plan's decisions; a
    backend decides nothing itself.
    """

    name: str
    device: str
    dtype: str
    threads: int
    """CPU threads the framework uses (0 where it sizes its own pool)."""
    compile: bool
    """Whether the training step is compiled."""

    @staticmethod
    def check_device(device: str) -> str:
        """The device this backend would run on for a configured device; raises LocaltrainError
        naming what is missing when it is not available here."""

    def set_distributed(self, dist: Any) -> None:
        """Train data-parallel in a torchrun job (call before `build`); raises where unsupported."""

    def set_activation_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them."""

    def set_memory_limit(self, limit_bytes: int) -> None:
        """Cap the memory training may take: allocations beyond it fail as out-of-memory."""

    def reset_peak_memory(self) -> None:
        """Start measuring the peak memory afresh."""

    def peak_memory_bytes(self) -> int:
        """The peak memory since `reset_peak_memory` (device memory, or the process's resident peak)."""

    def clear_compile_cache(self) -> None:
        """Forget compiled code held in memory, so that the next compile costs what a new process pays."""

    def set_measurement_cache(self, directory: Path) -> None:
        """Keep what the backend times for itself on this machine (which attention kernel a shape
        runs fastest with, say) in `directory`, and take it from there once it is kept."""

    def build(self, model: ModelConfig, vocab_size: int, seed: int) -> None:
        """Create the model with freshly initialised weights (deterministic in `seed`)."""

    def configure_optimizer(self, train: TrainConfig) -> None:
        """Create AdamW: decoupled weight decay on matrices, none on norms and embeddings."""

    def num_params(self) -> int:
        """Parameters in the model, the (padded) tied embedding counted once."""

    def train_step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], lr: float) -> StepResult:
        """One optimizer step: forward/backward over each (x, y) micro-batch, clip, update."""

    def token_losses(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-token negative log-likelihood (nats), shape of `y`, in eval mode, no gradients."""

    def decoder(self, dtype: str | None = None) -> Decoder:
        """A decoder over the current weights, in eval mode (`localtrain.sampling` samples from it),
        computing in `dtype` (None: the backend's training dtype)."""

    def memory_bytes(self) -> int:
        """Memory the backend holds now (device memory, or process RSS on CPU)."""

    def state_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(weights, optimizer moments) as float32 arrays under the shared names."""

    def load_state_arrays(
        self, weights: dict[str, np.ndarray], moments: dict[str, np.ndarray] | None, opt_step: int
    ) -> None:
        """Load weights (and moments, with the optimizer's step count) saved by any backend."""

    def rng_state(self) -> dict[str, Any]:
        """Every random-generator state training depends on, JSON-serialisable."""

    def set_rng_state(self, state: dict[str, Any]) -> None: ...

    def extra_state(self) -> dict[str, Any]:
        """Backend state beyond arrays (the float16 loss scale), JSON-serialisable."""

    def set_extra_state(self, state: dict[str, Any]) -> None: ...

    def measure_peak_flops(self) -> float:
        """Peak matmul FLOP/s in the training dtype, measured on this device."""

    def peak_key(self) -> str:
        """What the peak depends on (device, dtype, threads), for caching the measurement."""
