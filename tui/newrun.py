"""The New run screen: preset, data source and the common overrides, checked as you type.

The form is checked by the same code as `localtrain run` (config resolution and the
source check), so the messages are the command line's; a valid form shows the plan the
run will make on this machine. Start launches `localtrain run` detached and opens its
dashboard.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Input, Label, Select, Static

from localtrain import config as cfg
from localtrain.console import plan_batch, plan_choices

from localtrain.tui.launch import Checked, RunForm, check_form, new_run_args, run_dir_for, start_run
from localtrain.tui.widgets import MemoryBar
from localtrain.tui import messages as msg

FIELDS = (
    ("data", "data source", "the preset's own source (a file, a directory, or a named source)"),
    ("max_steps", "max steps", "from the token budget"),
    ("max_time", "max time (min)", "no limit"),
    ("seed", "seed", "the preset's"),
    ("overrides", "more overrides", "key=value ... e.g. train.lr=1e-3 model.n_layer=2"),
    ("name", "run name", "<data or preset>-<date-time>"),
)


class NewRunScreen(msg.HostedScreen):
    """A form for a new run, its problems or its plan, and a Start button."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("ctrl+s", "start", "Start")]

    def __init__(self, preset: str = "python-stdlib") -> None:
        super().__init__()
        self.preset = preset
        self.checked: Checked | None = None
        self.machine = None
        self.checks_done = 0

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="newrun"):
            yield Static("New run", classes="section-title")
            with Grid(id="form"):
                yield Label("preset")
                yield Select([(n, n) for n in cfg.preset_names()], value=self.preset, allow_blank=False, id="preset")
                for key, label, placeholder in FIELDS[:4]:
                    yield Label(label)
                    yield Input(placeholder=placeholder, id=key)
                yield Label("device")
                yield Select([(d, d) for d in cfg.DEVICES], value="auto", allow_blank=False, id="device")
                for key, label, placeholder in FIELDS[4:]:
                    yield Label(label)
                    yield Input(placeholder=placeholder, id=key)
            with Vertical(id="check-panel", classes="panel"):
                yield Static("checking...", id="problems")
                yield Static(id="plan")
                yield MemoryBar(id="newrun-memory")
            with Horizontal(id="newrun-buttons"):
                yield Button("Start [ctrl+s]", id="start", variant="success", disabled=True, action="screen.start")
                yield Button("Back [esc]", id="back", action="app.pop_screen")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#check-panel").border_title = "Check and plan"
        for w in self.query(Input):
            w.cursor_blink = self.host.cursor_blink
        self.query_one("#data", Input).focus()
        self.revalidate()

    def form(self) -> RunForm:
        values = {key: self.query_one(f"#{key}", Input).value for key, _, _ in FIELDS}
        return RunForm(preset=str(self.query_one("#preset", Select).value),
                       device=str(self.query_one("#device", Select).value), **values)

    @on(Input.Changed)
    @on(Select.Changed)
    def revalidate(self) -> None:
        self.run_worker(self.validate, exclusive=True, group="validate")

    async def validate(self) -> None:
        await asyncio.sleep(0.15)  # let fast typing settle
        form = self.form()
        checked = await asyncio.to_thread(check_form, form)
        plan, problem = None, ""
        if checked.config is not None:
            try:
                plan = await asyncio.to_thread(self._plan, checked.config)
            except Exception as exc:  # a LocaltrainError from check_plan, shown as the CLI shows it
                problem = f"error: {exc}"
        self.show(checked, plan, problem)

    def _plan(self, config: cfg.Config):
        from localtrain import planner
        from localtrain.data.paths import cache_root
        from localtrain.hardware import probe

        if self.machine is None:
            self.machine = probe(self.host.runs_dir, cache_root(config.data))
        planned = planner.plan(config, self.machine)
        planner.check_plan(planned, self.machine)
        return planned

    def show(self, checked: Checked, plan, problem: str) -> None:
        problems = self.query_one("#problems", Static)
        detail = self.query_one("#plan", Static)
        memory = self.query_one("#newrun-memory", MemoryBar)
        start = self.query_one("#start", Button)
        self.checked = checked if checked.config is not None and not problem else None
        start.disabled = self.checked is None
        if self.checked is None:
            problems.update(Text(checked.problems or problem, style="red"))
            detail.update("")
            memory.set({}, 0)
        else:
            c = checked.config
            problems.update(Text.assemble(("ok", "bold green"), f": preset {c.run.preset}, data {c.data.source},"
                                          f" overrides: {' '.join(checked.overrides) or 'none'}"))
            detail.update(Text(
                f"plan: {plan_choices(plan)} | {plan.params:,} params (vocabulary estimated)"
                f" | {plan_batch(plan)}"
                f" | {plan.total_steps:,} steps of {plan.tokens_per_step:,} tokens"
                + (f" (train.max_steps={c.train.max_steps})" if c.train.max_steps else "")))
            memory.set(plan.memory, plan.budget_bytes, title=f"memory at micro-batch {plan.micro_batch_size}")
        self.checks_done += 1

    def action_start(self) -> None:
        if self.checked is None:
            self.notify("Fix the problems shown first.", severity="error")
            return
        config = self.checked.config
        run_dir = run_dir_for(self.host.runs_dir, self.form(), config,
                              dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
        process = start_run(new_run_args(config.run.preset, self.checked.overrides), run_dir)
        self.post_message(msg.RunStarted(run_dir, process))
