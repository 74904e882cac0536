"""The home screen: the runs under the runs directory, and the presets."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Static

from localtrain import config as cfg
from localtrain.cli import preset_rows

from localtrain.tui.runs import RunSummary, describe_status, find_runs, summarize
from localtrain.tui.widgets import stamp
from localtrain.tui import messages as msg

RESUMABLE = ("stopped", "died", "failed", "finished")
SCAN_SECONDS = 2.0


def scan(runs_dir: Path) -> list[RunSummary]:
    return [summarize(d) for d in find_runs(runs_dir)]


class HomeScreen(msg.HostedScreen):
    """Runs (name, preset, status, step, best val ppl, last update) and presets."""

    BINDINGS = [
        Binding("enter", "open", "Open run", show=True, priority=True),
        Binding("r", "resume", "Resume run"),
        Binding("n", "new", "New run"),
        Binding("m", "machine", "Machine"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.summaries: list[RunSummary] = []
        self.scanned = asyncio.Event()

    def compose(self) -> ComposeResult:
        with Vertical(id="home"):
            yield Static(id="runs-title", classes="section-title")
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
            yield Static("Presets (Enter on one: a new run of it)", classes="section-title")
            yield DataTable(id="presets", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        runs = self.query_one("#runs", DataTable)
        runs.add_columns("run", "preset", "status", "step", "best val ppl", "last update")
        presets = self.query_one("#presets", DataTable)
        presets.add_columns("preset", "what it trains")
        for name, intro in preset_rows():
            presets.add_row(name, intro, key=name)
        runs.focus()
        self.set_interval(SCAN_SECONDS, self.rescan)
        self.call_later(self.rescan)

    async def rescan(self) -> None:
        self.show(await asyncio.to_thread(scan, self.host.runs_dir))
        self.scanned.set()

    def show(self, summaries: list[RunSummary]) -> None:
        table = self.query_one("#runs", DataTable)
        current = self.highlighted()
        self.summaries = summaries
        table.clear()
        for s in summaries:
            colour = describe_status(s.status)["colour"]
            step = "-" if s.step is None else f"{s.step:,}" + (f" / {s.total_steps:,}" if s.total_steps else "")
            ppl = "-" if s.best_val_ppl is None else f"{s.best_val_ppl:,.2f}"
            table.add_row(s.name, s.preset, Text(s.status, style=colour), step, ppl, stamp(s.last_time),
                          key=str(s.run_dir))
        self.query_one("#runs-title", Static).update(
            f"Runs in {self.host.runs_dir}/" + ("" if summaries else ": none yet. Press n to start one."))
        if current is not None and str(current.run_dir) in table.rows:
            table.move_cursor(row=table.get_row_index(str(current.run_dir)))

    def highlighted(self) -> RunSummary | None:
        table = self.query_one("#runs", DataTable)
        return self.summaries[table.cursor_row] if table.cursor_row < len(self.summaries) else None

    def action_open(self) -> None:
        presets = self.query_one("#presets", DataTable)
        if self.focused is presets:
            self.post_message(msg.OpenNewRun(cfg.preset_names()[presets.cursor_row]))
            return
        summary = self.highlighted()
        if summary is None:
            self.notify("No run to open: press n to start one.", severity="warning")
            return
        self.post_message(msg.OpenRun(summary.run_dir))

    def action_resume(self) -> None:
        summary = self.highlighted()
        if summary is None:
            return
        if summary.status not in RESUMABLE:
            self.notify(f"{summary.name} is {summary.status}; open it with Enter.", severity="warning")
            return
        self.post_message(msg.ResumeRun(summary.run_dir))

    def action_new(self) -> None:
        self.post_message(msg.OpenNewRun())

    def action_machine(self) -> None:
        self.post_message(msg.OpenMachine())
