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
import os
import time
from pathlib import Path

from localtrain.train import CONTROL_COMMANDS

CONTROL_FILE = "control.jsonl"


class ControlFile:
    """Reads the commands appended to a run's control file since it was opened."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / CONTROL_FILE
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def __call__(self) -> list[str]:
        try:
            if self.path.stat().st_size <= self.offset:
                return []
        except FileNotFoundError:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        commands = []
        for line in data[:end].splitlines():
            try:
                command = json.loads(line).get("command")
            except (ValueError, AttributeError):
                continue
            if command in CONTROL_COMMANDS:
                commands.append(command)
        return commands


def send(run_dir: Path, command: str) -> None:
    """Append one command to the run's control file (the loop reads it within a step)."""
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown command {command!r}; expected one of {', '.join(CONTROL_COMMANDS)}")
    line = json.dumps({"command": command, "time": time.time()}) + "\n"
    # One write of one short line in append mode: concurrent senders never interleave.
    fd = os.open(run_dir / CONTROL_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
