"""What the dashboard's screens ask of the app, as messages, and what they may read from it.

A screen never builds another screen: it posts one of these messages, which bubble up to
`LocaltrainApp`, and the app opens the screen asked for. The `Host` protocol names the
few attributes of the app a screen reads, so screens are typed without importing the app.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Protocol, cast

from textual.message import Message
from textual.screen import Screen


class RunMessage(Message):
    """A message about one run directory."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir


class OpenRun(RunMessage):
    """Show a run's dashboard (the app finds the live process it started for it, if any)."""


class ResumeRun(RunMessage):
    """Start `localtrain run --resume` in a run directory and show its dashboard."""


class RunStarted(RunMessage):
    """A new run's process was started: track it and show its dashboard in place of the form."""

    def __init__(self, run_dir: Path, process: subprocess.Popen) -> None:
        super().__init__(run_dir)
        self.process = process


class OpenNewRun(Message):
    """Show the new-run form, on `preset` when one is given."""

    def __init__(self, preset: str | None = None) -> None:
        super().__init__()
        self.preset = preset


class OpenMachine(Message):
    """Show what this machine has and can train."""


class GoHome(Message):
    """Leave a run's dashboard: back to the screen below it, or to the list of runs."""


class Host(Protocol):
    """What screens read from the app."""

    runs_dir: Path
    poll_interval: float
    cursor_blink: bool


class HostedScreen(Screen):
    """A screen of the dashboard: `host` is the app, typed."""

    @property
    def host(self) -> Host:
        return cast(Host, self.app)
