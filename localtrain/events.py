"""The typed event stream every consumer reads, and its JSONL writer and reader.

A run appends one JSON object a line to `events.jsonl` in its run directory and flushes
each line as it is written, so the console, the dashboard, tests and any later reader
see the same events, also from another process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from localtrain.files import Appender, ends_with_newline
from localtrain.jsonl import JsonlTail


@dataclass
class Event:
    kind: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_json(self) -> str:
        # Strict JSON: a non-finite float (a diverged loss) is written as null.
        obj = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in dataclasses.asdict(self).items()
        }
        return json.dumps({"type": self.kind, **obj}, allow_nan=False)


@dataclass
class Plan(Event):
    """How the run will train: backend, shapes, batch and schedule."""

    kind: ClassVar[str] = "plan"
    backend: str
    device: str
    dtype: str
    params: int
    vocab_size: int
    seq_len: int
    batch_size: int
    micro_batch_size: int
    grad_accum_steps: int
    tokens_per_step: int
    total_steps: int
    flops_per_token: float
    peak_flops: float
    threads: int
    compiled: bool
    train_tokens: int
    val_tokens: int
    resumed_from: int | None = None
    activation_checkpointing: bool = False
    predicted_peak_bytes: int = 0
    budget_bytes: int = 0
    predicted_tokens_per_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    world_size: int = 1
    decided_by: str = ""
    """Where dtype, compile and micro-batch came from: measured, measured (cached), resumed, explicit, defaults."""
    why: str = ""
    parallel: str = "none"
    """How the processes share the model: none, ddp or fsdp."""


@dataclass
class Prepare(Event):
    """Progress of data preparation."""

    kind: ClassVar[str] = "prepare"
    stage: str
    message: str
    files: int = 0
    documents: int = 0
    bytes: int = 0
    skipped: int = 0
    tokens: int = 0
    seconds: float = 0.0
    cached: bool = False
    documents_per_s: float = 0.0
    mb_per_s: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)
    """Documents dropped so far, by reason (redirect, disambiguation, duplicate, short, ...)."""
    chars_per_token: float = 0.0
    """Characters of text per token of the prepared data (stage "done"; 0 when not known)."""
    bytes_per_token: float = 0.0
    """UTF-8 bytes of text per token of the prepared data (stage "done"; 0 when not known)."""


@dataclass
class Tune(Event):
    """The tuner's progress: timing the planner's candidates of this shape on this machine."""

    kind: ClassVar[str] = "tune"
    stage: str
    """start, measured (one candidate), or cached (measurements of an earlier run reused)."""
    message: str = ""
    candidate: str = ""
    status: str = ""
    """ok, slower (stopped early), oom or crashed."""
    step_s: float = 0.0
    tokens_per_s: float = 0.0
    peak_bytes: int = 0
    warmup_s: float = 0.0


@dataclass
class Download(Event):
    kind: ClassVar[str] = "download"
    url: str
    bytes: int
    total: int | None
    bytes_per_s: float
    eta_s: float | None
    done: bool = False


@dataclass
class Step(Event):
    kind: ClassVar[str] = "step"
    step: int
    total_steps: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    tokens_per_s: float
    mfu: float
    step_time_s: float
    elapsed_s: float
    eta_s: float
    memory_bytes: int


@dataclass
class Eval(Event):
    kind: ClassVar[str] = "eval"
    step: int
    val_loss: float
    val_ppl: float
    val_bpb: float
    val_tokens: int
    val_bytes: int
    best_val_loss: float
    is_best: bool
    val_words: int = 0
    """Words of the scored text: whitespace-separated words plus one per line end."""
    val_word_ppl: float | None = None
    """exp(total nats / val_words): word-level perplexity, the WikiText convention."""
    best_metric: str = "val_loss"
    """The metric (train.best_metric) that picks best/ and drives early stopping."""
    best_value: float | None = None
    """Its best value so far."""


@dataclass
class Sample(Event):
    kind: ClassVar[str] = "sample"
    step: int
    prompt: str
    text: str
    tokens: int
    seed: int | None = None
    """The seed the text was drawn with (`localtrain sample --seed` takes the same numbers)."""
    manual: bool = False
    """Asked for by a controller (the dashboard's `s`), with a fresh seed; else on the schedule."""
    repetition_ratio: float | None = None
    """Share of the text's character 4-grams that repeat an earlier one."""
    distinct_1: float | None = None
    distinct_2: float | None = None
    collapsed: bool | None = None
    """One n-gram repeated back to back covers at least half the text."""
    unique_chars: int | None = None
    has_keyword: bool | None = None
    """Code runs only: the text holds a Python keyword."""
    parses: bool | None = None
    """Code runs only: prompt + text parses with `ast` (the unfinished last line may be dropped)."""


@dataclass
class SampleQuality(Event):
    """The quality of one batch of live samples: means of the per-sample figures, and rates."""

    kind: ClassVar[str] = "sample_quality"
    step: int
    samples: int
    repetition_ratio: float | None = None
    distinct_1: float | None = None
    distinct_2: float | None = None
    collapse_rate: float | None = None
    unique_chars: float | None = None
    keyword_rate: float | None = None
    parse_rate: float | None = None


@dataclass
class Checkpoint(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str
    reason: str
    bytes: int
    seconds: float


@dataclass
class Status(Event):
    """The run's state changed: running, paused (by a controller), or stopping."""

    kind: ClassVar[str] = "status"
    state: str
    message: str = ""


@dataclass
class Warning(Event):  # noqa: A001 - the event's name in the stream
    kind: ClassVar[str] = "warning"
    message: str
    code: str = ""


@dataclass
class Error(Event):
    kind: ClassVar[str] = "error"
    message: str


@dataclass
class Done(Event):
    kind: ClassVar[str] = "done"
    reason: str
    step: int
    tokens: int
    elapsed_s: float
    best_val_loss: float | None
    checkpoint: str | None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (Plan, Tune, Prepare, Download, Step, Eval, Sample, SampleQuality, Checkpoint, Status, Warning, Error, Done)
}

Emit = Callable[[Event], None]


def from_dict(obj: dict[str, Any]) -> Event | None:
    """The typed event for one decoded line; None for a type this version does not know.

    Raises TypeError when a known type lacks one of its fields."""
    kind = obj.get("type", "")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in obj.items() if k in names})


class EventWriter:
    """Appends events to a JSONL file, one line in one write each.

    A file whose last line was cut off (a process killed mid-write, a full disk) gets a
    newline first, so the next event starts a line of its own instead of being glued
    onto the broken one.
    """

    def __init__(self, path: Path) -> None:
        self._file = Appender(path)
        if not ends_with_newline(path):
            self._file.write(b"\n")

    def __call__(self, event: Event) -> None:
        self._file.write((event.to_json() + "\n").encode("utf-8"))

    def close(self) -> None:
        self._file.close()


def read_new(path: Path, offset: int = 0) -> tuple[list[Event], int]:
    """Events written after byte `offset`, and the offset to read from next time.

    A last line still being written (no newline yet) is left for the next call; lines
    that are not events are skipped (see `localtrain.jsonl`).
    """
    tail = JsonlTail(path, from_dict, offset=offset)
    batch = tail.read_all()
    return batch.items, tail.offset - len(tail.pending)


def read_events(path: Path) -> list[Event]:
    """Every event of a JSONL file; damaged, foreign and over-long lines are skipped."""
    return read_new(path)[0]
