"""The machine screen: `localtrain doctor`'s checks and capacity table, and one preset's plan.

The probe and the plans come from the doctor's own functions, run in a worker thread
(the first plan on a machine measures its matmul peak once).
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Static

from localtrain import config as cfg
from localtrain.console import human, plan_batch, plan_choices, size
from localtrain.data.paths import cache_root
from localtrain.doctor import STATUS_COLOURS, examine, human_time

from localtrain.tui.widgets import MemoryBar
from localtrain.tui.messages import HostedScreen


def plan_text(preset: str, p: dict[str, Any]) -> Text:
    disk = p["disk_needed"]
    text = Text.assemble(
        (f"{preset}", "bold"), f": {plan_choices(p)} | {human(p['params'])} params | {plan_batch(p)}\n",
        f"{p['total_steps']:,} steps of {human(p['tokens_per_step'])} tokens = {human(p['total_tokens'])} tokens |"
        + (f" {human(p['predicted_tokens_per_s'])} tokens/s measured | {human_time(p['predicted_seconds'])}\n"
           if p["predicted_tokens_per_s"] else " speed not measured yet (localtrain doctor --probe)\n"),
        f"budget: {p['budget_source']} | disk: data {size(disk['data'])}, checkpoints"
        f" {size(disk['checkpoints'])}\n",
    )
    for note in p.get("notes", []):
        text.append(f"note: {note}\n", style="dim")
    return text


class MachineScreen(HostedScreen):
    """The doctor report, the capacity table, and the highlighted preset's plan and memory."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("q", "app.pop_screen", "Back")]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.loaded = asyncio.Event()

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="machine"):
            yield Static("Probing this machine...", id="machine-title", classes="section-title")
            with Horizontal(id="machine-top"):
                yield DataTable(id="checks", cursor_type="none", show_cursor=False)
            yield Static("Capacity: a plan per preset", classes="section-title")
            yield DataTable(id="capacity", cursor_type="row")
            with Vertical(id="plan-panel", classes="panel"):
                yield Static(id="plan-detail")
                yield MemoryBar(id="plan-memory")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#checks", DataTable).add_columns("check", "status", "detail")
        self.query_one("#capacity", DataTable).add_columns(
            "preset", "fits", "backend", "dtype", "micro x accum", "peak / budget", "tokens/s", "time", "disk")
        self.query_one("#plan-panel").border_title = "Plan"
        self.run_worker(self.load(), exclusive=True)

    async def load(self) -> None:
        # Exactly as `localtrain doctor` makes them: every preset, no overrides, no probing.
        machine, checks, rows = await asyncio.to_thread(
            examine, self.host.runs_dir, cache_root(cfg.DataConfig()), cfg.preset_names(), [], False)
        self.query_one("#machine-title", Static).update(Text.assemble(
            ("Machine: ", "bold"), f"{machine.cpu_model}, {machine.physical_cores} cores,"
            f" {size(machine.ram_total_bytes)} RAM, {machine.os}"))
        table = self.query_one("#checks", DataTable)
        for c in checks:
            table.add_row(c.name, Text(c.status, style=STATUS_COLOURS[c.status]), c.detail)
        cap = self.query_one("#capacity", DataTable)
        self.rows = rows
        for row in rows:
            if "error" in row:
                cap.add_row(row["preset"], Text("no", style="red"), *[""] * 6, row["error"][:40], key=row["preset"])
                continue
            p = row["plan"]
            disk = p["disk_needed"]["data"] + p["disk_needed"]["checkpoints"]
            cap.add_row(
                row["preset"], Text("yes", style="green") if p["fits"] else Text("no", style="red"),
                f"{p['backend']}/{p['device']}", p["dtype"],
                f"{p['micro_batch_size']} x {p['grad_accum_steps']}" + (" (ckpt)" if p["activation_checkpointing"] else ""),
                f"{size(p['predicted_peak_bytes'])} / {size(p['budget_bytes'])}",
                human(p["predicted_tokens_per_s"]) if p["predicted_tokens_per_s"] else "-",
                human_time(p["predicted_seconds"]), size(disk),
                key=row["preset"],
            )
        cap.focus()
        self.show_plan(0)
        self.loaded.set()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "capacity":
            self.show_plan(event.cursor_row)

    def show_plan(self, index: int) -> None:
        if not self.rows or index >= len(self.rows):
            return
        row = self.rows[index]
        detail = self.query_one("#plan-detail", Static)
        memory = self.query_one("#plan-memory", MemoryBar)
        if "error" in row:
            detail.update(Text(f"{row['preset']}: {row['error']}", style="red"))
            memory.set({}, 0)
            return
        p = row["plan"]
        detail.update(plan_text(row["preset"], p))
        memory.set(p["memory"], p["budget_bytes"], title=f"memory at micro-batch {p['micro_batch_size']}")
