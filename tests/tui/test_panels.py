"""What the run dashboard's panels say: the data panel whole, a local source without a
download bar, a stop that is not a warning, a sample asked for, the header, one ETA, GiB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tui_helpers import ASKED_SEED, copy_fixture, local_run_with_a_sample_asked_for, run, until

from rich.text import Text

from localtrain import events as ev
from localtrain.console import duration, size
from localtrain.tui.app import LocaltrainApp
from localtrain.tui.dashboard import RunScreen
from localtrain.tui.machine import MachineScreen

SIZE = (140, 45)


def last_event(run_dir: Path, kind: type) -> ev.Event:
    return [e for e in ev.read_events(run_dir / "events.jsonl") if isinstance(e, kind)][-1]


def test_a_stopped_local_run_shows_its_data_whole_and_no_warning(tmp_path) -> None:
    runs = tmp_path / "runs"
    run_dir = local_run_with_a_sample_asked_for(runs)

    async def scenario() -> None:
        app = LocaltrainApp(runs, cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            app.open_run(run_dir)
            screen = app.screen
            await until(pilot, screen.caught_up.is_set, what="the events")
            await pilot.pause(0.2)
            assert screen.status == "stopped"
            # A local source downloads nothing: no empty download bar.
            assert not screen.query_one("#download").display
            # The data panel holds its whole message within its height (it once ended mid-sentence).
            panel = screen.query_one("#data-panel")
            assert panel.virtual_size.height <= panel.scrollable_content_region.height
            meter = screen.query_one("#prepare")
            assert "vocabulary 100." in meter.detail
            lines = Text(meter.detail).wrap(app.console, meter.content_region.width)
            assert meter.content_region.height >= 1 + len(lines)
            # Ctrl-C's stop is the run's state, not a warning.
            assert not any("Stop requested" in text for _, _, text in screen.state.messages)
            assert "none" in str(screen.query_one("#messages").render())
            # The sample asked for says so, with its seed; the scheduled ones at the same step do not.
            samples = str(screen.query_one("#samples").render())
            assert f"step 50 (asked for, seed {ASKED_SEED})" in samples
            assert samples.count("asked for") == 1
            # The header: two lines, neither wider than the terminal.
            title = str(screen.query_one("#run-title").render()).splitlines()
            assert len(title) == 2 and all(len(line) <= SIZE[0] for line in title)
            assert "torch/cpu" in title[1]
            # Sizes in binary units, as doctor prints them.
            ckpt = last_event(run_dir, ev.Checkpoint)
            assert size(ckpt.bytes) in str(screen.query_one("#checkpoints").render())
            memory = " ".join(str(part) for part in screen.query_one("#memory").render().renderables)
            assert "of 19.2 GiB budget" in memory and "MB" not in memory

    run(scenario())


def test_a_live_run_shows_the_eta_of_its_step_events(tmp_path) -> None:
    # One rule: the dashboard shows the trainer's own ETA, never a figure of its own.
    runs = tmp_path / "runs"
    run_dir = copy_fixture(runs)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    step = last_event(run_dir, ev.Step)

    async def scenario() -> None:
        app = LocaltrainApp(runs, cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            app.push_screen(RunScreen(run_dir, alive))
            screen = app.screen
            await until(pilot, screen.caught_up.is_set, what="the events")
            assert f"ETA {duration(step.eta_s)}" in screen.query_one("#progress").detail

    try:
        run(scenario())
    finally:
        alive.kill()
        alive.wait()


def test_the_machine_screen_speaks_gib_like_doctor(tmp_path) -> None:
    async def scenario() -> None:
        app = LocaltrainApp(tmp_path / "runs", cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            app.push_screen(MachineScreen())
            screen = app.screen
            await until(pilot, screen.loaded.is_set, what="the doctor report")
            title = str(screen.query_one("#machine-title").render())
            assert " GiB RAM" in title and "GB" not in title.replace("GiB", "")

    run(scenario())


def test_sizes_are_in_binary_units() -> None:
    assert size(25.3e9) == "23.6 GiB"
    assert size(385.4e6) == "367.5 MiB"
    assert size(377_100) == "368.3 KiB"
    assert size(512) == "512 B"
