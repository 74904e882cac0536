"""What the dashboard knows about a run: its events folded into a state, and its status.

Nothing here imports textual, so the folding and the status rules are plain functions.
`EventTail` reads `events.jsonl` through the shared JSONL tail (`localtrain.jsonl`): bounded
chunks from a remembered offset, a last line still being written kept for the next read,
a line that is not a valid event (or is too long) counted and reported, and a file that
shrank (replaced) read again from the top.
`RunState` folds events into what the screens draw. `run_status` combines the last
events with whether the writing process is alive (the pid in the run's `.lock`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localtrain import events as ev
from localtrain.console import NOT_PROBLEMS
from localtrain.jsonl import Batch, JsonlTail
from localtrain.ownership import pid_alive
from localtrain.runfiles import CONFIG_FILE, EVENTS_FILE, LOCK_FILE
CHUNK_BYTES = 256 * 1024
"""The most a single read takes from events.jsonl: the UI folds and redraws between reads."""
KEEP_SAMPLES = 12
KEEP_MESSAGES = 200

FINISHED_REASONS = ("complete", "early_stop")


def _event(obj: dict[str, Any]) -> ev.Event | None:
    """A line's event; None for a type this version does not know. An object that is no event raises."""
    event = ev.from_dict(obj)
    if event is None and not isinstance(obj.get("type"), str):
        raise ValueError("not an event object")
    return event


class EventTail(JsonlTail[ev.Event]):
    """Reads the events appended to a run's events.jsonl, a bounded chunk at a time (the shared JSONL tail)."""

    def __init__(self, path: Path, chunk_bytes: int = CHUNK_BYTES) -> None:
        super().__init__(path, _event, chunk_bytes=chunk_bytes)


def downsample(points: list[tuple[int, float | None]], limit: int = 400) -> list[tuple[int, float]]:
    """The finite points, at most `limit` of them, evenly spaced, always keeping the last."""
    points = [(s, v) for s, v in points if v is not None and math.isfinite(v)]
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    picked = [points[int(i * stride)] for i in range(limit - 1)]
    return picked + [points[-1]]


@dataclass
class RunState:
    """Everything drawn on a run's dashboard, folded from its events."""

    run_dir: Path
    plan: ev.Plan | None = None
    download: ev.Download | None = None
    prepare: ev.Prepare | None = None
    prepare_stages: dict[str, ev.Prepare] = field(default_factory=dict)
    step: ev.Step | None = None
    losses: dict[int, float] = field(default_factory=dict)
    evals: dict[int, ev.Eval] = field(default_factory=dict)
    samples: list[ev.Sample] = field(default_factory=list)
    checkpoints: list[ev.Checkpoint] = field(default_factory=list)
    messages: list[tuple[str, float, str]] = field(default_factory=list)
    """(level, time, text) for warnings, errors and unreadable lines, oldest first."""
    status: ev.Status | None = None
    done: ev.Done | None = None
    error: ev.Error | None = None
    last_time: float | None = None
    events_read: int = 0
    bad_lines: int = 0
    missing: bool = False
    stopping: bool = False
    """The trainer said it is checkpointing to stop."""
    truncated_bytes: int = 0
    """Bytes of an unfinished last line (kept while the writer is alive, reported when it is not)."""

    def fold(self, chunk: Batch[ev.Event]) -> None:
        """Take in one chunk of events (an `EventTail` read)."""
        # No events.jsonl yet is a run still starting; a missing directory is a state of its own.
        self.missing = chunk.missing and not self.run_dir.is_dir()
        for event in chunk.items:
            self.add(event)
        for line_no, text in chunk.bad:
            self.bad_lines += 1
            self.note("warning", self.last_time or 0.0,
                          f"events.jsonl line {line_no} is not a valid event and was skipped: {text!r}")

    def add(self, event: ev.Event) -> None:
        self.events_read += 1
        self.last_time = event.time
        if isinstance(event, ev.Step):
            self.step = event
            self.losses[event.step] = event.loss
        elif isinstance(event, ev.Eval):
            self.evals[event.step] = event
        elif isinstance(event, ev.Sample):
            self.samples = (self.samples + [event])[-KEEP_SAMPLES:]
        elif isinstance(event, ev.Checkpoint):
            self.checkpoints.append(event)
        elif isinstance(event, ev.Plan):
            self.plan = event
            # A resumed run goes on from its checkpoint: a later step replaces an earlier run of it.
            self.done = self.error = None
            self.stopping = False
        elif isinstance(event, ev.Prepare):
            self.prepare = event
            self.prepare_stages[event.stage] = event
        elif isinstance(event, ev.Download):
            self.download = event
        elif isinstance(event, ev.Status):
            self.status = event
        elif isinstance(event, ev.Warning):
            if event.code in NOT_PROBLEMS:
                # A stop someone asked for is the run's state, shown by its status, not a warning.
                self.stopping = True
            else:
                self.note("warning", event.time, event.message)
        elif isinstance(event, ev.Error):
            self.error = event
            self.note("error", event.time, event.message)
        elif isinstance(event, ev.Done):
            self.done = event

    def note(self, level: str, when: float, text: str) -> None:
        """Add a message to the list shown (the newest KEEP_MESSAGES are kept)."""
        self.messages = (self.messages + [(level, when, text)])[-KEEP_MESSAGES:]

    # -- derived figures ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def best_val_loss(self) -> float | None:
        if self.done is not None and self.done.best_val_loss is not None:
            return self.done.best_val_loss
        return self.evals[max(self.evals)].best_val_loss if self.evals else None

    @property
    def best_val_ppl(self) -> float | None:
        best = self.best_val_loss
        return math.exp(min(best, 700.0)) if best is not None and math.isfinite(best) else None

    def loss_points(self) -> list[tuple[int, float]]:
        return downsample(sorted(self.losses.items()))

    def val_points(self, key: str = "val_loss") -> list[tuple[int, float]]:
        return downsample([(s, getattr(e, key)) for s, e in sorted(self.evals.items())])


def lock_pid(run_dir: Path) -> int | None:
    """The pid recorded in the run's lock while a `localtrain run` holds it."""
    try:
        text = (run_dir / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    last = text.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else None


def run_status(state: RunState, alive: bool) -> str:
    """running, paused, waiting, stopping, starting, finished, stopped, failed, died, missing or empty.

    A `done` event decides: finished (complete, early stop) or stopped (interrupted, time
    limit). Without one, a live writer means running (or paused, or stopping); a dead
    one means failed after an `error` event, otherwise died (killed, or crashed). Waiting:
    training waits for its next phase of data to be prepared.
    """
    if state.missing and not alive:
        return "missing"
    if state.done is not None and not alive:
        return "finished" if state.done.reason in FINISHED_REASONS else "stopped"
    if alive:
        if state.status is not None and state.status.state in ("paused", "waiting"):
            return state.status.state
        if state.stopping:
            return "stopping"
        return "running" if state.events_read else "starting"
    if state.error is not None:
        return "failed"
    return "died" if state.events_read else "empty"


@dataclass
class RunSummary:
    """One row of the home screen."""

    run_dir: Path
    preset: str
    status: str
    step: int | None
    total_steps: int | None
    best_val_ppl: float | None
    last_time: float | None

    @property
    def name(self) -> str:
        return self.run_dir.name


def read_preset(run_dir: Path) -> str:
    from localtrain import config as cfg
    from localtrain.errors import LocaltrainError

    try:
        return str(cfg.read_toml(run_dir / CONFIG_FILE).get("run", {}).get("preset", "?"))
    except (LocaltrainError, OSError):
        return "?"


TAIL_BYTES = 256 * 1024


def summarize(run_dir: Path, alive: bool | None = None) -> RunSummary:
    """The home-screen row of a run, from the last part of its events only (bounded time)."""
    state = RunState(run_dir)
    path = run_dir / EVENTS_FILE
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    tail = EventTail(path, chunk_bytes=TAIL_BYTES)
    if size > TAIL_BYTES:
        # Start at a line boundary inside the last TAIL_BYTES.
        with open(path, "rb") as f:
            f.seek(size - TAIL_BYTES)
            tail.offset = size - TAIL_BYTES + len(f.readline())
    state.fold(tail.read())
    alive = pid_alive(lock_pid(run_dir)) if alive is None else alive
    step = state.step.step if state.step else (state.done.step if state.done else None)
    total = state.step.total_steps if state.step else (state.plan.total_steps if state.plan else None)
    return RunSummary(run_dir, read_preset(run_dir), run_status(state, alive), step, total,
                      state.best_val_ppl, state.last_time)


def find_runs(runs_dir: Path) -> list[Path]:
    """Run directories under `runs_dir` (any folder with a config.toml or events.jsonl)."""
    if not runs_dir.is_dir():
        return []
    found = [d for d in runs_dir.iterdir()
             if d.is_dir() and ((d / CONFIG_FILE).exists() or (d / EVENTS_FILE).exists())]

    def stamp(d: Path) -> float:
        return max(((d / n).stat().st_mtime for n in (CONFIG_FILE, EVENTS_FILE) if (d / n).exists()), default=0.0)

    return sorted(found, key=stamp, reverse=True)


def describe_status(status: str) -> dict[str, Any]:
    """The colour and one-line meaning of a status, for badges and help."""
    table = {
        "running": ("green", "training now"),
        "paused": ("yellow", "paused by a controller"),
        "waiting": ("yellow", "waiting for its next phase of data to be prepared"),
        "stopping": ("yellow", "writing its last checkpoint"),
        "starting": ("cyan", "the process started; no events yet"),
        "finished": ("blue", "trained to the end"),
        "stopped": ("magenta", "stopped with a checkpoint; resumable"),
        "failed": ("red", "ended with an error"),
        "died": ("red", "its process is gone without a final event"),
        "missing": ("red", "the run directory or its events.jsonl is missing"),
        "empty": ("dim", "no events yet"),
    }
    colour, meaning = table.get(status, ("white", status))
    return {"colour": colour, "meaning": meaning}
