"""How the dashboard looks, drawn from a recorded events.jsonl (no training, no clock).

Every time on screen comes from the events; the tests pin the time zone to UTC and turn
the cursor blink off, so the pictures are the same on every machine and every day.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tui_helpers import copy_fixture, local_run_with_a_sample_asked_for, until

from localtrain.tui.app import LocaltrainApp
from localtrain.tui.dashboard import RunScreen
from localtrain.tui.home import HomeScreen

SIZE = (140, 45)


@pytest.fixture
def frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A runs/ folder in a fresh working directory, times shown in UTC."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield tmp_path / "runs"
    monkeypatch.undo()
    time.tzset()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def damaged_runs(runs: Path) -> None:
    """Runs in the states a dashboard meets: stopped, died mid-line, killed, not started."""
    copy_fixture(runs, "code-model")
    half = copy_fixture(runs, "half-written", lines=60)
    with open(half / "events.jsonl", "a") as f:
        f.write("garbage that is not an event\n")
        f.write('{"type": "step", "time": 1795426433.2, "step": 4')
    killed = copy_fixture(runs, "killed", lines=45)
    (killed / ".lock").write_text(f"localtrain process {dead_pid()}")
    fresh = runs / "configured-only"
    fresh.mkdir()
    (fresh / "config.toml").write_text((runs / "code-model" / "config.toml").read_text())
    for i, name in enumerate(["code-model", "half-written", "killed", "configured-only"]):
        for f in (runs / name).iterdir():
            os.utime(f, (1_800_000_000 - i, 1_800_000_000 - i))


def opened(status: str, what: str = "the recorded events", settle: float = 0.0):
    """Before the snapshot: the run screen has read the whole events file and, `settle` seconds
    later, shows `status`."""

    async def check(pilot) -> None:
        await until(pilot, lambda: isinstance(pilot.app.screen, RunScreen) and pilot.app.screen.caught_up.is_set(),
                    what=what)
        if settle:
            await pilot.pause(settle)
        assert pilot.app.screen.status == status

    return check


def test_the_dashboard_of_a_recorded_run(snap_compare, frozen: Path) -> None:
    copy_fixture(frozen)
    app = LocaltrainApp("runs", cursor_blink=False, open_run=Path("runs/code-model"))
    assert snap_compare(app, terminal_size=SIZE, run_before=opened("stopped"))


def test_the_home_screen_shows_each_state(snap_compare, frozen: Path) -> None:
    damaged_runs(frozen)
    app = LocaltrainApp("runs", cursor_blink=False)

    async def scanned(pilot) -> None:
        await until(pilot, lambda: isinstance(pilot.app.screen, HomeScreen) and pilot.app.screen.scanned.is_set(),
                    what="the runs")
        states = {s.name: s.status for s in pilot.app.screen.summaries}
        assert states == {"code-model": "stopped", "half-written": "died", "killed": "died",
                          "configured-only": "empty"}

    assert snap_compare(app, terminal_size=SIZE, run_before=scanned)


def test_a_run_that_died_mid_line_opens_with_its_warnings(snap_compare, frozen: Path) -> None:
    damaged_runs(frozen)
    app = LocaltrainApp("runs", cursor_blink=False, open_run=Path("runs/half-written"))

    async def loaded(pilot) -> None:
        await opened("died", "the events", settle=0.3)(pilot)
        screen = pilot.app.screen
        texts = [m[2] for m in screen.state.messages]
        assert any("not a valid event" in t for t in texts)
        assert any("last line of events.jsonl is incomplete" in t for t in texts)

    assert snap_compare(app, terminal_size=SIZE, run_before=loaded)


def test_a_local_run_with_a_sample_asked_for(snap_compare, frozen: Path) -> None:
    # No download bar for a local source, the sample asked for marked with its seed, no warning
    # for the stop.
    local_run_with_a_sample_asked_for(frozen)
    app = LocaltrainApp("runs", cursor_blink=False, open_run=Path("runs/local-notes"))
    assert snap_compare(app, terminal_size=SIZE, run_before=opened("stopped"))
