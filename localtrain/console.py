"""The headless console: a live progress line on a terminal, plain log lines elsewhere.

It is one more reader of the event stream; nothing here affects training.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from localtrain import events as ev
from localtrain.files import human as human_bytes


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


size = human_bytes
"""Bytes in binary units, as everywhere in localtrain: 512 B, 3.2 KiB, 349.1 MiB, 23.5 GiB."""


def _field(plan: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(plan, Mapping) and name in plan:
            return plan[name]
        if not isinstance(plan, Mapping) and hasattr(plan, name):
            return getattr(plan, name)
    return default


def plan_choices(plan: Any) -> str:
    """What a plan runs on, in the words every view uses: `torch/cpu bfloat16 compiled`.

    `plan` is a RunPlan, its plan.json dict, or a `plan` event."""
    compiled = _field(plan, "compile", "compiled", default=False)
    return f"{_field(plan, 'backend')}/{_field(plan, 'device')} {_field(plan, 'dtype')}" + (" compiled" if compiled else "")


def plan_batch(plan: Any) -> str:
    """How a plan splits a step: `batch 32 = micro 8 x accum 4 x 2 processes (activation checkpointing)`."""
    world = _field(plan, "world_size", default=1) or 1
    return (f"batch {_field(plan, 'batch_size')} = micro {_field(plan, 'micro_batch_size')} x accum"
            f" {_field(plan, 'grad_accum_steps')}" + (f" x {world} processes" if world > 1 else "")
            + (" (FSDP: model sharded)" if _field(plan, "parallel") == "fsdp" else "")
            + (" (activation checkpointing)" if _field(plan, "activation_checkpointing") else ""))


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(seconds)
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


NOT_PROBLEMS = ("stopping",)
"""Warning codes that report a stop someone asked for (Ctrl-C, `q`): news, not a problem."""


def sample_origin(event: ev.Sample) -> str:
    """What a sample a controller asked for says of itself (its fresh seed); empty on the schedule."""
    return f" (asked for, seed {event.seed})" if event.manual else ""


def describe(event: ev.Event) -> str | None:
    """One plain line for an event, or None for events shown only as progress."""
    if isinstance(event, ev.Plan):
        resumed = f" | resumed from step {event.resumed_from}" if event.resumed_from is not None else ""
        return (
            f"plan: {plan_choices(event)}, {event.threads} threads | {human(event.params)} params | vocab"
            f" {event.vocab_size} | {plan_batch(event)} of {event.seq_len} tokens |"
            f" {event.total_steps} steps | data {human(event.train_tokens)} train / {human(event.val_tokens)}"
            f" val tokens | matmul peak {human(event.peak_flops, 'FLOP/s')} | memory ~{size(event.predicted_peak_bytes)}"
            f" of {size(event.budget_bytes)}{resumed}"
        )
    if isinstance(event, ev.Prepare):
        return f"data: {event.message}"
    if isinstance(event, ev.Tune):
        if event.stage != "measured":
            return f"tune: {event.message}"
        if event.status not in ("ok", "slower"):
            return f"tune: {event.candidate}: {event.status} ({event.message})"
        warm = f", warm-up {event.warmup_s:.1f} s" if event.warmup_s >= 0.5 else ""
        behind = " (behind the best: stopped)" if event.status == "slower" else ""
        return (f"tune: {event.candidate}: {human(event.tokens_per_s)} tok/s, {event.step_s * 1000:.1f} ms/step,"
                f" peak {event.peak_bytes / 2**30:.2f} GiB{warm}{behind}")
    if isinstance(event, ev.Step):
        return (
            f"step {event.step}/{event.total_steps} | loss {event.loss:.4f} | lr {event.lr:.2e} |"
            f" {human(event.tokens_per_s)} tok/s | MFU {event.mfu:.1%} | ETA {duration(event.eta_s)}"
        )
    if isinstance(event, ev.Eval):
        best = " (best)" if event.is_best else ""
        return (
            f"eval step {event.step} | val loss {event.val_loss:.4f} | ppl {event.val_ppl:.2f} |"
            f" {event.val_bpb:.3f} bits/byte{best}"
        )
    if isinstance(event, ev.Sample):
        return f"sample step {event.step}{sample_origin(event)} | {event.prompt!r} ->\n{event.prompt}{event.text}"
    if isinstance(event, ev.Checkpoint):
        return f"checkpoint step {event.step} ({event.reason}): {event.path} ({size(event.bytes)}, {event.seconds:.2f} s)"
    if isinstance(event, ev.Status):
        return f"status: {event.state}" + (f" ({event.message})" if event.message else "")
    if isinstance(event, ev.Warning):
        return f"{'stopping' if event.code in NOT_PROBLEMS else 'warning'}: {event.message}"
    if isinstance(event, ev.Error):
        return f"error: {event.message}"
    if isinstance(event, ev.Done):
        best = f" | best val loss {event.best_val_loss:.4f}" if event.best_val_loss is not None else ""
        return f"done ({event.reason}) at step {event.step} | {human(event.tokens)} tokens | {duration(event.elapsed_s)}{best}"
    if isinstance(event, ev.Download):
        return f"download: {event.url} {size(event.bytes)} at {size(event.bytes_per_s)}/s"
    return None


class ConsoleView:
    """Renders events to a terminal (live) or to a plain stream (one line per event)."""

    def __init__(self, stream: IO[str] | None = None, log_every: int = 10, live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.log_every = log_every
        self.live_mode = self.stream.isatty() if live is None else live
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self.live: Live | None = None
        self.last_step: ev.Step | None = None
        self.last_eval: ev.Eval | None = None

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Eval):
            self.last_eval = event
        if not self.live_mode:
            self._plain(event)
        else:
            self._live(event)

    def _plain(self, event: ev.Event) -> None:
        if isinstance(event, ev.Step) and event.step % self.log_every and event.step != event.total_steps:
            return
        line = describe(event)
        if line is not None:
            print(line, file=self.stream, flush=True)

    # -- live terminal ---------------------------------------------------------------------

    def _status(self) -> Group:
        s, e = self.last_step, self.last_eval
        grid = Table.grid(padding=(0, 1))
        fields = [ProgressBar(total=max(1, s.total_steps if s else 1), completed=s.step if s else 0, width=30)]
        if s:
            fields.append(Text(f"step {s.step}/{s.total_steps}  loss {s.loss:.4f}"))
        if e:
            fields.append(Text(f"val ppl {e.val_ppl:.2f}  {e.val_bpb:.3f} bpb"))
        if s:
            fields.append(Text(f"{human(s.tokens_per_s)} tok/s  MFU {s.mfu:.1%}  ETA {duration(s.eta_s)}"))
        grid.add_row(*fields)
        return Group(grid)

    def _live(self, event: ev.Event) -> None:
        if isinstance(event, ev.Step):
            self.last_step = event
            if self.live is None:
                self.live = Live(self._status(), console=self.console, refresh_per_second=4, transient=True)
                self.live.start()
        elif isinstance(event, ev.Sample):
            self.console.print(Panel(
                Text(event.prompt, style="bold") + Text(event.text),
                title=f"sample at step {event.step}{sample_origin(event)}", title_align="left", expand=False,
            ))
        elif isinstance(event, ev.Done):
            self.close()
            self.console.print(describe(event) or "")
        else:
            line = describe(event)
            if line is not None:
                style = ("yellow" if isinstance(event, ev.Warning) and event.code not in NOT_PROBLEMS
                         else "red" if isinstance(event, ev.Error) else None)
                self.console.print(line, style=style)
        if self.live is not None:
            self.live.update(self._status())

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
