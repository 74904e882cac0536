"""Helpers for the dashboard tests: the recorded run, waiting inside a Pilot, and a lag probe."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "code-model"


def copy_fixture(runs_dir: Path, name: str = "code-model", lines: int | None = None) -> Path:
    """The recorded run copied to runs_dir/name (its first `lines` events only, if given)."""
    run_dir = runs_dir / name
    shutil.copytree(FIXTURE, run_dir)
    if lines is not None:
        kept = (FIXTURE / "events.jsonl").read_text().splitlines(keepends=True)[:lines]
        (run_dir / "events.jsonl").write_text("".join(kept))
    return run_dir


async def until(pilot, predicate, timeout: float = 90.0, what: str = "the condition") -> None:
    """Let the app run until `predicate()` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


class LagProbe:
    """Measures how late the app's event loop runs a 20 ms timer (the UI's responsiveness)."""

    def __init__(self, app, interval: float = 0.02) -> None:
        self.interval = interval
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self.timer = app.set_interval(interval, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    @property
    def max_lag(self) -> float:
        return max((g - self.interval for g in self.gaps), default=0.0)

    def p99_lag(self) -> float:
        lags = sorted(g - self.interval for g in self.gaps)
        return lags[int(0.99 * (len(lags) - 1))] if lags else 0.0

    def stop(self) -> None:
        self.timer.stop()


def run(coro) -> None:
    asyncio.run(coro)


BASELINE = """
import asyncio, json, sys, time
async def main(seconds):
    gaps, last = [], time.perf_counter()
    end = last + seconds
    while last < end:
        await asyncio.sleep(0.02)
        now = time.perf_counter()
        gaps.append(now - last - 0.02)
        last = now
    gaps.sort()
    print(json.dumps({"max": gaps[-1], "p99": gaps[int(0.99 * (len(gaps) - 1))], "ticks": len(gaps)}))
asyncio.run(main(float(sys.argv[1])))
"""


def start_baseline(seconds: float) -> subprocess.Popen:
    """A bare asyncio loop in another process, timing the same 20 ms ticks: what the machine's
    load alone costs a loop, to compare the dashboard's lag with."""
    return subprocess.Popen([sys.executable, "-c", BASELINE, str(seconds)], stdout=subprocess.PIPE, text=True)


def baseline_result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=60)
    return json.loads(out)


ASKED_SEED = 4242


def local_run_with_a_sample_asked_for(runs_dir: Path, name: str = "local-notes") -> Path:
    """The recorded run as a run on a local source (no download event), with one sample asked
    for by the dashboard's `s` at step 50, where the scheduled samples were drawn too."""
    run_dir = copy_fixture(runs_dir, name)
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    kept = [x for x in lines if json.loads(x)["type"] != "download"]
    last_sample = max(i for i, x in enumerate(kept) if json.loads(x)["type"] == "sample")
    scheduled = json.loads(kept[last_sample])
    asked = {**scheduled, "time": scheduled["time"] + 0.5, "prompt": "def ", "text": " add(a, b):\n    return a",
             "seed": ASKED_SEED, "manual": True}
    kept.insert(last_sample + 1, json.dumps(asked) + "\n")
    (run_dir / "events.jsonl").write_text("".join(kept))
    return run_dir
