"""The values of a run's plan: what the planner decides and what the tuner measures.

`RunPlan` holds every decision of a run, made once by `localtrain.planner`; `Choice` is
what a measurement settles (dtype, compile, micro-batch), `Measured` one candidate timed
by the tuner and `Tuned` all of a shape's. Plain frozen values: every layer may read them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Choice:
    """What a measurement settles: the compute dtype, compile, and the micro-batch."""

    dtype: str
    compile: bool
    micro_batch_size: int
    activation_checkpointing: bool = False

    @property
    def label(self) -> str:
        ckpt = ", checkpointing" if self.activation_checkpointing else ""
        return f"{self.dtype} {'compiled' if self.compile else 'eager'}, micro-batch {self.micro_batch_size}{ckpt}"


@dataclass(frozen=True)
class Measured:
    """One candidate timed in a few real optimizer steps of the run's shape."""

    choice: Choice
    status: str
    """ok; slower (stopped early, already behind the best); oom; crashed."""
    step_s: float = math.inf
    """Median seconds of one optimizer step over the per-process batch."""
    peak_bytes: int = 0
    warmup_s: float = 0.0
    """What a new process pays before its first step runs at speed: a warm compile, first-step set-up."""
    detail: str = ""
    decode_s: float = 0.0
    """Seconds per token of a live sample decoded in this dtype (0: not timed, as in a second
    candidate of a dtype already timed)."""

    def wall_s(self, steps: int) -> float:
        """The predicted wall time of `steps` optimizer steps: warm-up, then steps at the measured rate."""
        return self.warmup_s + steps * self.step_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("choice"))
        d["step_s"] = d["step_s"] if math.isfinite(d["step_s"]) else None  # strict JSON
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measured:
        names = {f.name for f in dataclasses.fields(Choice)}
        choice = Choice(**{k: d[k] for k in names if k in d})
        rest = {k: v for k, v in d.items() if k not in names}
        rest["step_s"] = math.inf if rest.get("step_s") is None else float(rest["step_s"])
        return cls(choice, **rest)


@dataclass(frozen=True)
class Tuned:
    """The tuner's measurements of one shape on this machine."""

    measured: tuple[Measured, ...]
    cached: bool = False
    seconds: float = 0.0
    """Machine time the measurements took (0 when read from the cache)."""


@dataclass(frozen=True)
class RunPlan:
    """Every decision of a run, made once, with what the planner predicts of it."""

    backend: str
    device: str
    dtype: str
    compile: bool
    threads: int
    batch_size: int
    """Sequences per optimizer step, over every process."""
    world_size: int
    micro_batch_size: int
    grad_accum_steps: int
    activation_checkpointing: bool
    seq_len: int
    tokens_per_step: int
    total_steps: int
    total_tokens: int
    params: int
    vocab_size: int
    flops_per_token: float
    memory: dict[str, int]
    predicted_peak_bytes: int
    budget_bytes: int
    budget_source: str
    fits: bool
    """Whether the predicted peak at the chosen micro-batch is within the budget."""
    min_peak_bytes: int
    """The predicted peak at one sequence per micro-batch with activation checkpointing."""
    predicted_tokens_per_s: float
    """Measured tokens/s of the chosen candidate (0 when nothing was measured)."""
    predicted_seconds: float
    disk_needed: dict[str, int]
    disk_free: dict[str, int]
    decided_by: str
    """measured, measured (cached), resumed, explicit, or defaults: where dtype/compile/micro-batch came from."""
    why: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    """The candidates measured, with their figures and predicted wall time."""
    notes: list[str] = field(default_factory=list)
    parallel: str = "none"
    """How the processes share the model: none (one process), ddp or fsdp."""
    accumulate_unsharded: bool = False
    """Under FSDP with accumulation: gradients accumulate unsharded and are reduce-scattered once a
    step (they fit the budget), rather than after every micro-batch."""
    sample_dtype: str = ""
    """The dtype live samples decode in where the tuner measured another one faster than `dtype`
    (empty: `dtype`)."""

    @property
    def rank_batch(self) -> int:
        """Sequences each process trains on per step."""
        return self.batch_size // self.world_size

    @property
    def choice(self) -> Choice:
        return Choice(self.dtype, self.compile, self.micro_batch_size, self.activation_checkpointing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
