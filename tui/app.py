"""The `localtrain` dashboard: a thin Textual app over the home, machine, new-run and run screens.

`localtrain` with no subcommand calls `main(args)`; `args.runs_dir` is where runs are
found (the same default, `runs`, that `localtrain run` writes to). Runs started here
are detached `localtrain run` processes, so quitting (or a crash) never stops them.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from textual.app import App

from localtrain.tui import messages as msg
from localtrain.tui.dashboard import RunScreen
from localtrain.tui.home import HomeScreen
from localtrain.tui.launch import start_run
from localtrain.tui.machine import MachineScreen
from localtrain.tui.newrun import NewRunScreen

class LocaltrainApp(App):
    """The dashboard. `poll_interval` is how often a run's events are read (seconds)."""

    TITLE = "localtrain"
    CSS_PATH = "localtrain.tcss"

    def __init__(self, runs_dir: Path | str = "runs", poll_interval: float = 0.25,
                 cursor_blink: bool = True, open_run: Path | None = None) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.poll_interval = poll_interval
        self.cursor_blink = cursor_blink
        self.open_on_start = open_run
        self.children_started: list[subprocess.Popen] = []
        """Runs started from this app (reaped when they exit; never stopped by quitting)."""

    def on_mount(self) -> None:
        self.push_screen(HomeScreen())
        if self.open_on_start is not None:
            self.open_run(self.open_on_start)

    def open_run(self, run_dir: Path) -> None:
        """Show a run's dashboard, with the live child this app started for it, if any."""
        live = (proc for proc in self.children_started if proc.poll() is None and str(run_dir) in proc.args)
        self.push_screen(RunScreen(run_dir, next(live, None)))

    # -- what the screens ask for (tui/messages.py) -----------------------------------------

    def on_open_run(self, message: msg.OpenRun) -> None:
        self.open_run(message.run_dir)

    def on_resume_run(self, message: msg.ResumeRun) -> None:
        process = start_run(["--resume"], message.run_dir)
        self.children_started.append(process)
        self.push_screen(RunScreen(message.run_dir, process))

    def on_run_started(self, message: msg.RunStarted) -> None:
        self.children_started.append(message.process)
        self.switch_screen(RunScreen(message.run_dir, message.process))

    def on_open_new_run(self, message: msg.OpenNewRun) -> None:
        self.push_screen(NewRunScreen(preset=message.preset) if message.preset else NewRunScreen())

    def on_open_machine(self, message: msg.OpenMachine) -> None:
        self.push_screen(MachineScreen())

    def on_go_home(self, message: msg.GoHome) -> None:
        if len(self.screen_stack) > 2:
            self.pop_screen()
        else:
            self.switch_screen(HomeScreen())


def main(args: argparse.Namespace) -> int:
    """Open the dashboard on `args.runs_dir`; returns the exit status."""
    app = LocaltrainApp(Path(getattr(args, "runs_dir", "runs") or "runs"))
    app.run()
    return app.return_code or 0
