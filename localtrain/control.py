"""The control channel of a running `localtrain run`: a file of commands.

A controller (the dashboard, a script, or `echo`) appends one JSON object a line to
`control.jsonl` in the run directory, e.g. `{"command": "pause"}`. The training loop
reads the lines added since it started, between steps, and carries them out:

    pause       stop after the current step and wait
    resume      continue after a pause
    sample      generate the live samples now
    checkpoint  write a checkpoint now
    stop        checkpoint and exit, as on SIGINT

Commands written before the run started are ignored, so an old file never replays.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from localtrain.files import append, ends_with_newline
from localtrain.jsonl import JsonlTail
from localtrain.runfiles import CONTROL_FILE

CONTROL_COMMANDS = ("pause", "resume", "sample", "checkpoint", "stop")


class ControlFile:
    """Reads the commands appended to a run's control file since it was opened.

    Lines are read once each through the shared JSONL tail: a damaged, foreign or
    over-long line is skipped, and `warn` (if given) hears of it once per read.
    """

    def __init__(self, run_dir: Path, warn: Callable[[str], None] | None = None) -> None:
        self.path = run_dir / CONTROL_FILE
        start = self.path.stat().st_size if self.path.exists() else 0
        self.tail: JsonlTail[str] = JsonlTail(self.path, _command, offset=start)
        self.warn = warn

    def __call__(self) -> list[str]:
        try:
            if self.path.stat().st_size == self.tail.offset:
                return []
        except (FileNotFoundError, NotADirectoryError):
            return []
        batch = self.tail.read_all()
        if batch.bad and self.warn is not None:
            line, what = batch.bad[0]
            more = f" and {len(batch.bad) - 1} more" if len(batch.bad) > 1 else ""
            self.warn(f"{self.path} line {line} is not a command and was ignored: {what}{more}. A command is one "
                      f'JSON object a line, e.g. {{"command": "pause"}}.')
        return batch.items


def _command(obj: dict[str, Any]) -> str | None:
    command = obj.get("command")
    return command if isinstance(command, str) and command in CONTROL_COMMANDS else None


def send(run_dir: Path, command: str) -> None:
    """Append one command to the run's control file (the loop reads it within a step)."""
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown command {command!r}; expected one of {', '.join(CONTROL_COMMANDS)}")
    path = run_dir / CONTROL_FILE
    # A cut-off last line gets its newline first, so the command is a line of its own.
    line = ("" if ends_with_newline(path) else "\n") + json.dumps({"command": command, "time": time.time()}) + "\n"
    # One write of one short line in append mode: concurrent senders never interleave.
    append(path, line.encode())
