"""The dashboard driven by a real Pilot, against real `localtrain run` processes."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from conftest import TINY, localtrain, read_jsonl, sets, start_localtrain, wait_for
from tui_helpers import FIXTURE, LagProbe, baseline_result, copy_fixture, run, start_baseline, until

from localtrain.tui.app import LocaltrainApp
from localtrain.tui.dashboard import RunScreen
from localtrain.tui.dialogs import QuitDialog
from localtrain.tui.home import HomeScreen
from localtrain.tui.machine import MachineScreen
from localtrain.tui.newrun import NewRunScreen
from localtrain.tui.runs import CHUNK_BYTES, EventTail

SIZE = (140, 45)


@pytest.fixture
def tail_reads(monkeypatch) -> list[tuple[EventTail, int, int]]:
    """(reader, thread id, bytes taken) of every read of an events file, by any screen: the
    real read, wrapped so each call records where it ran."""
    reads: list[tuple[EventTail, int, int]] = []
    read = EventTail.read

    def recorded(self: EventTail):
        before = self.offset
        chunk = read(self)
        reads.append((self, threading.get_ident(), self.offset - before))
        return chunk

    monkeypatch.setattr(EventTail, "read", recorded)
    return reads


def events_of(run_dir: Path) -> list[dict]:
    """The complete lines of a live run's events.jsonl."""
    text = (run_dir / "events.jsonl").read_text() if (run_dir / "events.jsonl").exists() else ""
    return [json.loads(x) for x in text.splitlines(keepends=True) if x.endswith("\n")]


def test_navigation_between_screens(tmp_path, cache_dir) -> None:
    runs = tmp_path / "runs"
    copy_fixture(runs)
    cli = localtrain(["config", "--set", "train.lr=abc", "--set", "model.n_layer=0"], tmp_path, cache_dir)
    assert cli.returncode != 0

    async def scenario() -> None:
        app = LocaltrainApp(runs, cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, HomeScreen) and app.screen.scanned.is_set())
            assert [s.name for s in app.screen.summaries] == ["code-model"]
            await pilot.press("m")
            assert isinstance(app.screen, MachineScreen)
            await until(pilot, app.screen.loaded.is_set, what="the doctor report")
            assert [r["preset"] for r in app.screen.rows] == [r for r in app.screen.query_one("#capacity").rows]
            await pilot.press("down")
            detail = str(app.screen.query_one("#plan-detail").render())
            assert app.screen.rows[1]["preset"] in detail
            await pilot.press("escape")
            assert isinstance(app.screen, HomeScreen)
            await pilot.press("n")
            screen = app.screen
            assert isinstance(screen, NewRunScreen)
            await until(pilot, lambda: screen.checks_done >= 1, what="the first check")
            await pilot.click("#overrides")
            await pilot.press(*"train.lr=abc model.n_layer=0")
            # Checked as typed; once typing stops, the paragraph the command line prints.
            await until(pilot, lambda: str(screen.query_one("#problems").render()).strip() == cli.stderr.strip(),
                        what="the command line's message")
            assert screen.query_one("#start").disabled
            screen.query_one("#overrides").value = "train.lr=1e-3"
            await until(pilot, lambda: not screen.query_one("#start").disabled, what="a valid form")
            assert "plan:" in str(screen.query_one("#plan").render())
            await pilot.press("escape")
            assert isinstance(app.screen, HomeScreen)
            await pilot.press("enter")
            assert isinstance(app.screen, RunScreen) and app.screen.run_dir == runs / "code-model"
            await until(pilot, app.screen.caught_up.is_set)
            assert app.screen.status == "stopped"
            await pilot.press("escape")
            assert isinstance(app.screen, HomeScreen)
            await pilot.press("q")
        assert app.return_code == 0

    run(scenario())


def test_a_run_started_from_the_new_run_screen_pauses_continues_and_stops_with_a_checkpoint(
        tmp_path, code_corpus, cache_dir, tail_reads) -> None:
    runs = tmp_path / "runs"
    found: dict = {}

    async def scenario() -> None:
        found["loop_thread"] = threading.get_ident()
        app = LocaltrainApp(runs, cursor_blink=False, poll_interval=0.1)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, HomeScreen))
            await pilot.press("n")
            form = app.screen
            form.query_one("#data").value = str(code_corpus)
            form.query_one("#max_steps").value = "100000"
            form.query_one("#overrides").value = " ".join(TINY)
            form.query_one("#name").value = "from-the-form"
            await until(pilot, lambda: not form.query_one("#start").disabled and form.checked is not None
                        and form.checked.config.train.max_steps == 100000, what="a valid form")
            probe = LagProbe(app)
            await pilot.press("ctrl+s")
            screen = app.screen
            assert isinstance(screen, RunScreen) and screen.process is not None
            found["process"], found["run_dir"], found["tail"] = screen.process, screen.run_dir, screen.tail
            assert screen.run_dir == runs / "from-the-form"
            await until(pilot, lambda: screen.state.step is not None and screen.state.samples, timeout=180,
                        what="step and sample events")
            assert screen.status == "running"
            assert "step" in str(screen.query_one("#progress").detail)
            probe.stop()
            found["lag_start"] = (probe.max_lag, probe.p99_lag(), len(probe.gaps))
            # Three seconds while it trains at full speed, beside a bare loop in another process.
            probe = LagProbe(app)
            first_step = screen.state.step.step
            baseline = start_baseline(3.0)
            await pilot.pause(3.0)
            probe.stop()
            found["baseline"] = baseline_result(baseline)
            found["lag"] = (probe.max_lag, probe.p99_lag(), len(probe.gaps), (first_step, screen.state.step.step))
            # Pause, then continue.
            await pilot.press("p")
            await until(pilot, lambda: screen.status == "paused", what="the paused state")
            paused_at = screen.state.step.step
            await pilot.pause(0.5)
            assert screen.state.step.step == paused_at
            await pilot.press("p")
            await until(pilot, lambda: screen.status == "running" and screen.state.step.step > paused_at + 3,
                        what="training to continue")
            # Quit, stopping the run.
            await pilot.press("q")
            assert isinstance(app.screen, QuitDialog)
            await pilot.press("s")
        assert app.return_code == 0

    run(scenario())
    proc, run_dir = found["process"], found["run_dir"]
    assert proc.wait(timeout=60) == 0
    events = read_jsonl(run_dir / "events.jsonl")
    assert [e["state"] for e in events if e["type"] == "status"] == ["running", "paused", "running"]
    done = events[-1]
    assert done["type"] == "done" and done["reason"] == "interrupted"
    assert Path(done["checkpoint"]).parent == run_dir / "checkpoints"
    assert (Path(done["checkpoint"]) / "COMPLETE").exists()
    max_lag, p99, ticks, steps = found["lag"]
    start_max, start_p99, start_ticks = found["lag_start"]
    print(f"\nevent-loop lag from Start to the first samples: max {start_max * 1000:.0f} ms, p99"
          f" {start_p99 * 1000:.0f} ms over {start_ticks} ticks of 20 ms")
    print(f"event-loop lag while training: max {max_lag * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
          f" over {ticks} ticks of 20 ms, steps {steps[0]} to {steps[1]}")
    base = found["baseline"]
    print(f"a bare asyncio loop in another process meanwhile: max {base['max'] * 1000:.0f} ms,"
          f" p99 {base['p99'] * 1000:.0f} ms over {base['ticks']} ticks")
    assert ticks > 20
    # The live run's events were read while it trained, never on the UI's event loop.
    live = [thread for tail, thread, _ in tail_reads if tail is found["tail"]]
    assert len(live) > 20
    assert found["loop_thread"] not in live, "a read ran on the UI's event loop"


def test_attaching_to_a_headless_run_leaving_it_and_resuming_it_after_a_kill(tmp_path, code_corpus,
                                                                            cache_dir) -> None:
    runs = tmp_path / "runs"
    found: dict = {}
    run_dir = runs / "headless"
    proc = start_localtrain(
        ["run", "--data", str(code_corpus), "--max-steps", "100000", "--run-dir", str(run_dir),
         *sets(TINY + ["train.sample_every=0", "train.checkpoint_every=0"])],
        tmp_path, cache_dir,
    )
    try:
        wait_for(lambda: any(e["type"] == "step" for e in events_of(run_dir)), timeout=180, proc=proc)

        async def attach() -> None:
            app = LocaltrainApp(runs, cursor_blink=False, poll_interval=0.1)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: isinstance(app.screen, HomeScreen) and app.screen.summaries)
                assert app.screen.summaries[0].status == "running"
                await pilot.press("enter")
                screen = app.screen
                assert isinstance(screen, RunScreen) and screen.process is None
                await until(pilot, lambda: screen.status == "running" and screen.state.step is not None)
                first = screen.state.step.step
                await until(pilot, lambda: screen.state.step.step > first, what="new steps")
                await pilot.press("s")
                await until(pilot, lambda: screen.state.samples, what="a sample asked for")
                await pilot.press("c")
                await until(pilot, lambda: any(c.reason == "requested" for c in screen.state.checkpoints),
                            what="a checkpoint asked for")
                await pilot.press("q")
                assert isinstance(app.screen, QuitDialog)
                await pilot.press("l")  # leave it running

        run(attach())
        # Still training after the dashboard quit.
        left_at = max(e["step"] for e in events_of(run_dir) if e["type"] == "step")
        wait_for(lambda: max(e["step"] for e in events_of(run_dir) if e["type"] == "step") > left_at + 5, proc=proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)

    async def after_kill() -> None:
        app = LocaltrainApp(runs, cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, HomeScreen) and app.screen.summaries)
            assert app.screen.summaries[0].status == "died"
            await pilot.press("enter")
            await until(pilot, app.screen.caught_up.is_set)
            assert app.screen.status == "died"
            await pilot.press("p")  # nothing to control: a notice, not a crash
            assert not (run_dir / "control.jsonl").read_text().count("pause")
            await pilot.press("escape")
            await pilot.press("r")  # resume it from its newest checkpoint
            screen = app.screen
            assert isinstance(screen, RunScreen) and screen.process is not None
            found["resumed"] = screen.process
            await until(pilot, lambda: screen.state.plan is not None and screen.state.plan.resumed_from is not None
                        and screen.status == "running", timeout=180, what="the resumed run")
            assert screen.state.plan.resumed_from == found["checkpoint_step"]
            await pilot.press("q")
            await pilot.press("s")

    found["checkpoint_step"] = max(e["step"] for e in events_of(run_dir) if e["type"] == "checkpoint")
    run(after_kill())
    assert found["resumed"].wait(timeout=60) == 0
    assert events_of(run_dir)[-1]["type"] == "done"


def test_reading_a_large_events_file_keeps_the_loop_responsive(tmp_path, tail_reads) -> None:
    """50,000 step events (~20 MB) load in bounded chunks, each read in a worker thread: a read
    on the event loop would freeze the UI for as long as it takes (~0.6 s for the whole file)."""
    runs = tmp_path / "runs"
    run_dir = copy_fixture(runs)
    lines = (FIXTURE / "events.jsonl").read_text().splitlines()
    step = json.loads(next(x for x in lines if '"type": "step"' in x))
    n = 50_000
    with open(run_dir / "events.jsonl", "w") as f:
        for x in lines[:6]:
            f.write(x + "\n")
        for i in range(1, n + 1):
            f.write(json.dumps({**step, "step": i, "total_steps": n, "loss": 4.0 / (1 + i / 1000)}) + "\n")
    size = os.path.getsize(run_dir / "events.jsonl")
    found = {}

    async def scenario() -> None:
        found["loop_thread"] = threading.get_ident()
        app = LocaltrainApp(runs, cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            probe = LagProbe(app)
            app.open_run(run_dir)
            screen = app.screen
            found["tail"] = screen.tail
            await until(pilot, screen.caught_up.is_set, what="the whole file")
            probe.stop()
            assert screen.state.step.step == n and screen.state.events_read == n + 6
            assert len(screen.state.loss_points()) <= 400
            found["lag"] = (probe.max_lag, probe.p99_lag(), len(probe.gaps))

    run(scenario())
    max_lag, p99, ticks = found["lag"]
    print(f"\nevent-loop lag reading {size / 1e6:.1f} MB: max {max_lag * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
          f" {ticks} ticks of 20 ms")
    reads = [(thread, taken) for tail, thread, taken in tail_reads if tail is found["tail"]]
    assert sum(taken for _, taken in reads) == size
    assert max(taken for _, taken in reads) <= CHUNK_BYTES and len(reads) > size // CHUNK_BYTES
    assert found["loop_thread"] not in {thread for thread, _ in reads}, "a read ran on the UI's event loop"


def test_localtrain_without_a_command_opens_the_dashboard_in_a_terminal(tmp_path, cache_dir) -> None:
    """`localtrain --runs-dir DIR` on a real pseudo-terminal: the home screen lists the run; q quits."""
    import pty
    import select
    import subprocess
    import sys
    import time

    from conftest import cli_env

    copy_fixture(tmp_path / "elsewhere")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "localtrain", "--runs-dir", "elsewhere"], cwd=tmp_path,
                            env={**cli_env(cache_dir), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    screen = b""

    def drain(until) -> None:
        # The app's writes block when nobody reads the terminal: always read.
        nonlocal screen
        deadline = time.monotonic() + 60
        while not until() and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    screen += os.read(leader, 65536)
                except OSError:
                    return

    try:
        drain(lambda: b"code-model" in screen and b"stopped" in screen)
        assert b"code-model" in screen and b"stopped" in screen
        os.write(leader, b"q")
        drain(lambda: proc.poll() is not None)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)


def test_a_missing_run_directory_and_a_run_that_fails_to_start_are_states(tmp_path) -> None:
    from localtrain.tui.launch import start_run

    runs = tmp_path / "runs"
    runs.mkdir()

    async def scenario() -> None:
        app = LocaltrainApp(runs, cursor_blink=False, poll_interval=0.1)
        async with app.run_test(size=SIZE) as pilot:
            app.open_run(runs / "gone")
            screen = app.screen
            await until(pilot, screen.caught_up.is_set)
            assert screen.status == "missing"
            assert any("does not exist" in m[2] for m in screen.state.messages)
            await pilot.press("escape")
            bad = runs / "bad-source"
            proc = start_run(["--preset", "python-stdlib", "--set", f"data.source={tmp_path / 'nowhere'}"], bad)
            app.push_screen(RunScreen(bad, proc))
            screen = app.screen
            await until(pilot, lambda: screen.status == "failed", what="the failed state")
            assert proc.returncode == 2
            assert any("exited with status 2" in m[2] and "nowhere" in m[2] for m in screen.state.messages)

    run(scenario())


def test_the_home_screen_says_none_yet_only_while_there_is_no_run(tmp_path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()

    async def scenario() -> None:
        app = LocaltrainApp(runs, cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, HomeScreen) and app.screen.scanned.is_set())
            title = app.screen.query_one("#runs-title")
            assert "none yet" in str(title.render())
            copy_fixture(runs)
            app.screen.scanned.clear()
            await until(pilot, app.screen.scanned.is_set, what="the next scan")
            assert [s.name for s in app.screen.summaries] == ["code-model"]
            assert str(title.render()) == f"Runs in {runs}/"
            await pilot.press("q")

    run(scenario())
