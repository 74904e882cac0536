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

from localtrain.tui.launch import resume_args, start_run

CSS = """
Screen { layout: vertical; }
.section-title { text-style: bold; color: $accent; height: 1; margin: 0 1; }
.panel { border: round $primary-darken-1; padding: 0 1; }
.panel-title { text-style: bold; color: $accent; height: 1; }
#home { height: 1fr; }
#runs { height: 1fr; margin: 0 1; }
#presets { height: auto; max-height: 9; margin: 0 1; }
#run-title { height: 1; background: $boost; }
#top { height: 13; }
#data-panel { width: 1fr; }
#train-panel { width: 2fr; }
#progress { height: 2; }
#speed { height: 3; }
#plots { height: 1fr; min-height: 10; }
#loss-plot { width: 3fr; }
#ppl-plot { width: 2fr; }
#bottom { height: 12; }
#samples-panel { width: 2fr; }
#checkpoints-panel { width: 38; }
#messages-panel { width: 1fr; }
#form { grid-size: 2; grid-columns: 18 1fr; grid-rows: 3; height: auto; margin: 0 1; }
#form Label { padding: 1 0 0 1; }
#check-panel { height: auto; min-height: 6; margin: 0 1; }
#newrun-buttons { height: 3; margin: 0 1; }
#newrun-buttons Button { margin-right: 2; }
#machine-top { height: auto; }
#checks { height: auto; margin: 0 1; }
#capacity { height: auto; margin: 0 1; }
#plan-panel { height: auto; margin: 0 1; }
"""


class LocaltrainApp(App):
    """The dashboard. `poll_interval` is how often a run's events are read (seconds)."""

    TITLE = "localtrain"
    CSS = CSS

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
        from localtrain.tui.home import HomeScreen

        self.push_screen(HomeScreen())
        if self.open_on_start is not None:
            self.open_run(self.open_on_start)

    def track(self, process: subprocess.Popen) -> None:
        self.children_started.append(process)

    def process_for(self, run_dir: Path) -> subprocess.Popen | None:
        """The live child this app started for `run_dir`, if any."""
        for proc in self.children_started:
            if proc.poll() is None and str(run_dir) in proc.args:
                return proc
        return None

    def open_run(self, run_dir: Path) -> None:
        from localtrain.tui.dashboard import RunScreen

        self.push_screen(RunScreen(run_dir, self.process_for(run_dir)))

    def resume_run(self, run_dir: Path) -> None:
        from localtrain.tui.dashboard import RunScreen

        process = start_run(resume_args(), run_dir)
        self.track(process)
        self.push_screen(RunScreen(run_dir, process))


def main(args: argparse.Namespace) -> int:
    """Open the dashboard on `args.runs_dir`; returns the exit status."""
    app = LocaltrainApp(Path(getattr(args, "runs_dir", "runs") or "runs"))
    app.run()
    return app.return_code or 0
