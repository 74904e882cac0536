"""Which fused attention kernel runs the training step: measured on the step's own shape.

PyTorch's scaled_dot_product_attention has several fused kernels on an NVIDIA GPU
(FlashAttention-2, cuDNN's, the memory-efficient one) and picks among them by a fixed
order. Which one is fastest depends on the card, the head size and the library
versions, so the backend times each that accepts the shape (forward and backward, on
random data from its own generator) once per shape, checks that it agrees with the
others, and puts the fastest first for the training step. For a 16-bit step it also
times each kernel in float32 (q, k and v cast up, the output cast back): on a CPU torch's
16-bit attention can be several times slower than its float32 one, and then the step
runs attention in float32. What was measured is kept in the measurement cache per
machine, framework version, shape and dtype (`Choices`): a later run of the shape, or a
stopped one started again, computes attention the same way without timing it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from localtrain.backends.torch_device import TORCH_DTYPES
from localtrain.files import read_table, write_table

# The fused kernels a GPU may have; the math fallback writes out the T x T scores.
FUSED = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")
KEPT_FILE = "attention.json"
"""Where the choices are kept, in the measurement cache."""


def cache_upcast_graphs() -> None:
    """Let the compiler cache a step whose attention runs in float32 as it caches any other.

    The float32 attention turns autocast off around itself; the compiler's step cache
    refuses a graph that enters or leaves an autocast region unless told it may keep one,
    and a new process would then trace and optimise the whole step again (2 s of a 3 s warm
    start on a 2-core CPU). The region's entry and exit depend only on the arguments the
    graph writes down, which are part of the cache's key.
    """
    import torch._inductor.config as inductor

    marked = getattr(inductor, "unsafe_marked_cacheable_functions", None)
    if marked is not None:  # torch 2.6 and later
        names = (f"torch.amp.autocast_mode.{name}" for name in ("_enter_autocast", "_exit_autocast"))
        inductor.unsafe_marked_cacheable_functions = {**marked, **{name: torch.__version__ for name in names}}


@dataclass
class AttentionChoice:
    """The measured order of the fused kernels for one shape, fastest first."""

    order: list[str] = field(default_factory=list)
    ms: dict[str, float] = field(default_factory=dict)
    """Forward + backward milliseconds of each kernel that ran."""
    refused: dict[str, str] = field(default_factory=dict)
    """Kernels that could not run the shape, or disagreed with the others, and why."""
    upcast: bool = False
    """Attention in float32 (inputs cast up, output cast back): the fastest way measured."""

    def context(self) -> contextlib.AbstractContextManager:
        """Run attention with the measured order (the rest as fallbacks) inside this block."""
        if not self.order:
            return contextlib.nullcontext()
        order = [getattr(SDPBackend, name) for name in self.order]
        rest = [getattr(SDPBackend, n) for n in (*FUSED, "MATH") if n not in self.order]
        try:
            return sdpa_kernel(order + rest, set_priority=True)
        except TypeError:  # no priorities before torch 2.6: only the fastest is allowed
            return sdpa_kernel(order[:1] + [SDPBackend.MATH])


class Choices(dict):
    """A backend's AttentionChoice per (micro-batch, dtype name), each measured once per machine:
    with `kept_in` set, a choice is read from there and a new one written there, so that two runs
    of a shape (a run and its restart, say) compute attention alike however busy the machine
    was when each started."""

    kept_in: Path | None = None

    def of(self, shape: tuple[int, int, int, int], dtype: str, device: str) -> AttentionChoice:
        """The choice for (B, heads, T, hs) in `dtype` on `device`: held, kept, or measured now."""
        key = (shape[0], dtype)
        if key not in self:
            self[key] = self._kept(shape, dtype, device)
        return self[key]

    def _kept(self, shape: tuple[int, int, int, int], dtype: str, device: str) -> AttentionChoice:
        if self.kept_in is None:
            return measure(shape, TORCH_DTYPES[dtype], device)
        where = (torch.cuda.get_device_name() if device.startswith("cuda")
                 else f"{device}{os.cpu_count()}-{torch.get_num_threads()}threads")
        name = json.dumps([platform.node(), where, torch.__version__, list(shape), dtype])
        table = read_table(self.kept_in / KEPT_FILE)
        with contextlib.suppress(TypeError):  # an entry of another form is measured again
            if isinstance(table.get(name), dict):
                return AttentionChoice(**table[name])
        choice = measure(shape, TORCH_DTYPES[dtype], device)
        table[name] = asdict(choice)
        with contextlib.suppress(OSError):  # a read-only cache measures again next time
            write_table(self.kept_in / KEPT_FILE, table)
        return choice


def _least_ms(ways: dict[str, tuple[str, Callable[[], torch.Tensor]]], rounds: int, repeats: int,
              sync: Callable[[], None]) -> dict[str, float]:
    """Each way's least milliseconds a call over `rounds` rounds of `repeats` calls of every way in turn."""
    least: dict[str, float] = {}
    for _ in range(rounds):
        for label, (name, run) in ways.items():
            with sdpa_kernel([getattr(SDPBackend, name)]):
                sync()
                start = time.perf_counter()
                for _ in range(repeats):
                    run()
                sync()
            ms = (time.perf_counter() - start) * 1000 / repeats
            least[label] = min(ms, least.get(label, ms))
    return least


def measure(shape: tuple[int, int, int, int], dtype: torch.dtype, device: str = "cuda",
            repeats: int = 3, rounds: int = 10) -> AttentionChoice:
    """Time causal attention forward + backward on (B, heads, T, hs) with each fused kernel, and
    for a 16-bit dtype with each in float32 too (its label ends in "/float32"): `rounds` rounds
    of `repeats` calls of every way in turn, each way's least round kept, so that a burst of
    other work on the machine slows one round rather than one way's whole measurement."""
    choice = AttentionChoice()
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    B, H, T, hs = shape
    # The model's layout: (B, T, heads, hs) projections seen as (B, heads, T, hs).
    q, k, v = [torch.randn(B, T, H, hs, device=device, dtype=dtype, generator=gen).transpose(1, 2).requires_grad_()
               for _ in range(3)]
    grad = torch.randn(q.shape, device=device, dtype=dtype, generator=gen)
    outputs: dict[str, torch.Tensor] = {}
    ways: dict[str, tuple[str, Callable[[], torch.Tensor]]] = {}
    for name, upcast in [(n, False) for n in FUSED] + ([(n, True) for n in FUSED] if dtype != torch.float32 else []):
        label = name + ("/float32" if upcast else "")

        def run(upcast: bool = upcast) -> torch.Tensor:
            ins = (q.float(), k.float(), v.float()) if upcast else (q, k, v)
            out = F.scaled_dot_product_attention(*ins, is_causal=True).to(dtype)
            out.backward(grad)
            return out

        try:
            with sdpa_kernel([getattr(SDPBackend, name)]):
                outputs[label] = run()[:1].detach().float()
                run()
        except RuntimeError as exc:
            choice.refused[label] = str(exc).strip().splitlines()[0][:200]
            continue
        ways[label] = (name, run)
    choice.ms = _least_ms(ways, rounds, repeats, sync)
    q.grad = k.grad = v.grad = None
    # A kernel whose output strays from float32 arithmetic on the first sequence is left out
    # (16-bit rounding gives ~4e-3).
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(*(t[:1].float() for t in (q, k, v)), is_causal=True)
    for label, out in outputs.items():
        err = float((out - ref).norm() / ref.norm())
        if not err <= 2e-2:
            choice.refused[label] = f"output differs from float32 arithmetic by {err:.1e} (relative)"
            del choice.ms[label]
    fastest = sorted(choice.ms, key=choice.ms.get)
    choice.upcast = bool(fastest) and fastest[0].endswith("/float32")
    # The kernels as the step runs them (in its dtype, or all in float32), fastest first.
    choice.order = [label.split("/")[0] for label in fastest if label.endswith("/float32") == choice.upcast]
    return choice
