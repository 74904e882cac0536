"""The names of the files in a run directory, and where runs live, in one place.

Every module that reads or writes a run directory names its files from here, so that the
runner, the trainer, the exporter and the dashboard agree on them.
"""

import difflib
from pathlib import Path

RUNS_ROOT = Path("runs")
"""Where new runs go (relative to the working directory) unless --run-dir names one."""

CONFIG_FILE = "config.toml"
"""The run's resolved configuration (what `--resume` reads back)."""
EVENTS_FILE = "events.jsonl"
"""Every event of the run, one JSON object a line (`localtrain.events`)."""
CONTROL_FILE = "control.jsonl"
"""Commands to the running loop, appended by a controller (`localtrain.control`)."""
CONSOLE_LOG = "console.log"
"""What a run started from the dashboard prints."""
PLAN_FILE = "plan.json"
"""The planner's decisions and predictions for the run."""
LOCK_FILE = ".lock"
"""Holds the pid of the process training in the run directory."""


def no_such_run(path: Path) -> str:
    """That `path` does not exist, with the nearest run directory's name when there is one."""
    parent = path.parent if path.parent.is_dir() else RUNS_ROOT
    runs = sorted(d.name for d in parent.iterdir() if (d / CONFIG_FILE).is_file()) if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, runs, n=1, cutoff=0.4)
    if close:
        hint = f" Did you mean {parent / close[0]}?"
    elif runs:
        hint = f" The runs in {parent}/ are: {', '.join(runs[-5:])}{' and more' if len(runs) > 5 else ''}."
    else:
        hint = " Give a run directory such as runs/python-stdlib-20260101-120000."
    return f"{path} does not exist.{hint}"
