"""Reading a run's events for the dashboard: damaged files and dead processes are states."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tui_helpers import FIXTURE, copy_fixture

from localtrain.tui.runs import EventTail, RunState, find_runs, lock_pid, pid_alive, run_status, summarize


def fold_all(run_dir: Path, chunk_bytes: int = 1024) -> tuple[RunState, EventTail]:
    state, tail = RunState(run_dir), EventTail(run_dir / "events.jsonl", chunk_bytes)
    while True:
        chunk = tail.read()
        state.fold(chunk)
        if not chunk.more:
            return state, tail


def test_bounded_chunks_read_the_whole_recording(tmp_path) -> None:
    lines = (FIXTURE / "events.jsonl").read_text().splitlines()
    run_dir = copy_fixture(tmp_path)
    tail = EventTail(run_dir / "events.jsonl", chunk_bytes=1024)
    chunks, taken = [], []
    while True:
        before = tail.offset
        chunks.append(tail.read())
        taken.append(tail.offset - before)
        if not chunks[-1].more:
            break
    # Many small reads, none larger than the bound, together the whole file.
    size = (run_dir / "events.jsonl").stat().st_size
    assert max(taken) <= 1024 and sum(taken) == size and len(chunks) == -(-size // 1024)
    state = RunState(run_dir)
    for c in chunks:
        state.fold(c)
    assert state.events_read == len(lines) and state.bad_lines == 0
    last = json.loads(lines[-1])
    assert state.done is not None and state.done.step == last["step"]
    assert run_status(state, alive=False) == "stopped"
    assert state.best_val_loss == last["best_val_loss"]


def test_a_garbage_line_and_a_truncated_last_line_are_reported_not_fatal(tmp_path) -> None:
    lines = (FIXTURE / "events.jsonl").read_text().splitlines(keepends=True)
    run_dir = copy_fixture(tmp_path, lines=30)
    following = lines[30]
    with open(run_dir / "events.jsonl", "a") as f:
        f.write("this is not json\n")
        f.write("[1, 2, 3]\n")
        f.write(following[:25])  # the writer is in the middle of a line
    state, tail = fold_all(run_dir)
    assert state.events_read == 30
    assert state.bad_lines == 2
    assert [m[0] for m in state.messages if "not a valid event" in m[2]] == ["warning", "warning"]
    assert tail.pending == following[:25].encode()
    assert run_status(state, alive=False) == "died"
    assert run_status(state, alive=True) == "running"
    # The line is completed by a live writer: it is read then, once.
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(following[25:])
    state.fold(tail.read())
    assert tail.pending == b""
    assert state.bad_lines == 2 and state.events_read == 31
    assert state.last_time == json.loads(following)["time"]


def test_a_missing_run_directory_is_a_state(tmp_path) -> None:
    state, _ = fold_all(tmp_path / "gone")
    assert state.missing and run_status(state, alive=False) == "missing"
    assert summarize(tmp_path / "gone").status == "missing"


def test_status_follows_the_process_in_the_lock(tmp_path) -> None:
    run_dir = copy_fixture(tmp_path, lines=30)  # training, before the recorded pause
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run_dir / ".lock").write_text(f"localtrain process {proc.pid}")
        assert lock_pid(run_dir) == proc.pid and pid_alive(proc.pid)
        assert summarize(run_dir).status == "running"
    finally:
        proc.kill()
        proc.wait()
    assert not pid_alive(proc.pid)
    assert summarize(run_dir).status == "died"
    (run_dir / ".lock").write_text("")  # released
    assert summarize(run_dir).status == "died"


def test_find_runs_and_summaries(tmp_path) -> None:
    runs = tmp_path / "runs"
    copy_fixture(runs, "a")
    copy_fixture(runs, "b", lines=12)
    (runs / "not-a-run").mkdir()
    os.utime(runs / "a" / "events.jsonl", (1, 1))
    os.utime(runs / "a" / "config.toml", (1, 1))
    assert [d.name for d in find_runs(runs)] == ["b", "a"]
    events = [json.loads(x) for x in (FIXTURE / "events.jsonl").read_text().splitlines()]
    done = events[-1]
    a = summarize(runs / "a")
    assert (a.preset, a.status, a.step) == ("python-stdlib", "stopped", done["step"])
    assert a.best_val_ppl is not None and abs(math.log(a.best_val_ppl) - done["best_val_loss"]) < 1e-9
    b = summarize(runs / "b")
    steps = [e for e in events[:12] if e["type"] == "step"]
    plan = next(e for e in events if e["type"] == "plan")
    assert b.status == "died" and b.step == steps[-1]["step"] and b.total_steps == plan["total_steps"]
    assert find_runs(tmp_path / "nowhere") == []


def test_the_recorded_states_in_order(tmp_path) -> None:
    """Folded line by line with a live writer: running, paused, running, stopping; then stopped."""
    lines = (FIXTURE / "events.jsonl").read_text().splitlines()
    run_dir = copy_fixture(tmp_path)
    state, seen = RunState(run_dir), []
    tail = EventTail(run_dir / "events.jsonl", chunk_bytes=1)
    (run_dir / "events.jsonl").write_text("")
    for line in lines:
        with open(run_dir / "events.jsonl", "a") as f:
            f.write(line + "\n")
        tail.chunk_bytes = len(line) + 1
        state.fold(tail.read())
        status = run_status(state, alive=json.loads(line)["type"] != "done")
        if not seen or seen[-1] != status:
            seen.append(status)
    assert seen == ["running", "paused", "running", "stopping", "stopped"]


def test_a_run_waiting_for_its_next_phase_shows_as_waiting(tmp_path) -> None:
    from localtrain import events as ev
    from localtrain.tui.runs import describe_status

    state = RunState(tmp_path)
    state.add(ev.Status(state="running", message="Training from step 0 to 200."))
    state.add(ev.Status(state="waiting", message="Waiting for phase 2 of 3 (the first 15,000 documents)."))
    assert run_status(state, alive=True) == "waiting"
    assert "next phase" in describe_status("waiting")["meaning"]
    state.add(ev.Status(state="running", message="The data is ready after 3 s of waiting."))
    assert run_status(state, alive=True) == "running"
    assert run_status(state, alive=False) == "died"
