"""Starting `localtrain run` as a detached child process, and the form behind it.

A run started from the dashboard is an ordinary `localtrain run` in a session of its own
(start_new_session): closing or crashing the dashboard never stops it, and the dashboard
reads it and controls it exactly as it would a run started in another terminal. Its
console output goes to `console.log` in the run directory.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from localtrain import config as cfg, flags
from localtrain.errors import LocaltrainError

from localtrain.runfiles import CONFIG_FILE, CONSOLE_LOG, EVENTS_FILE


@dataclass
class RunForm:
    """What the New run screen holds, as typed."""

    preset: str = "python-stdlib"
    data: str = ""
    max_steps: str = ""
    max_time: str = ""
    device: str = "auto"
    seed: str = ""
    overrides: str = ""
    """More `key=value` overrides, separated by spaces (as after --set)."""
    name: str = ""


@dataclass
class Checked:
    """A form checked as `localtrain run` would check it: the config, or the problems."""

    config: cfg.Config | None
    overrides: list[str] = field(default_factory=list)
    problems: str = ""


def _number(text: str, flag: str, kind: type) -> tuple[object | None, str | None]:
    text = text.strip()
    if not text:
        return None, None
    try:
        return kind(text), None
    except ValueError:
        return None, f"argument {flag}: invalid {kind.__name__} value: {text!r}"


def check_form(form: RunForm) -> Checked:
    """Resolve the form into a config, with the messages the command line gives."""
    from localtrain.runner import check_source

    max_steps, p1 = _number(form.max_steps, "--max-steps", int)
    max_time, p2 = _number(form.max_time, "--max-time", float)
    seed, p3 = _number(form.seed, "--seed", int)
    flag_problems = [p for p in (p1, p2, p3) if p]
    try:
        extra = shlex.split(form.overrides)
    except ValueError as exc:
        extra = []
        flag_problems.append(f"overrides: {exc}")
    overrides = flags.overrides(form.data.strip() or None, extra, max_steps=max_steps, max_time=max_time,
                                device=None if form.device in ("", "auto") else form.device, seed=seed)
    if flag_problems:
        return Checked(None, overrides, "error: " + "\n".join(flag_problems))
    try:
        config = cfg.resolve(form.preset or "python-stdlib", overrides)
        check_source(config)
    except LocaltrainError as exc:
        return Checked(None, overrides, f"error: {exc}")
    return Checked(config, overrides)


def run_dir_for(runs_dir: Path, form: RunForm, config: cfg.Config, stamp: str) -> Path:
    """The run directory a new run gets: the typed name, or <data or preset>-<date-time> as
    `localtrain run` names it."""
    from localtrain.rundir import run_name

    name = form.name.strip() or f"{run_name(config)}-{stamp}"
    path, n = runs_dir / name, 1
    while (path / CONFIG_FILE).exists() or (path / EVENTS_FILE).exists() or _foreign(path):
        n += 1
        path = runs_dir / f"{name}-{n}"
    return path


def _foreign(path: Path) -> bool:
    """A path a new run may not use: a file, or a folder with things in it that is not a run's."""
    from localtrain.ownership import kind_of

    return path.exists() and kind_of(path) != "run" and (not path.is_dir() or any(path.iterdir()))


def start_run(run_args: list[str], run_dir: Path) -> subprocess.Popen:
    """Start `localtrain run --plain --run-dir RUN_DIR ARGS` detached from this process."""
    from localtrain.rundir import claim

    claim(run_dir)  # the run's own folder (with its marker) before console.log goes into it
    with open(run_dir / CONSOLE_LOG, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "localtrain", "run", "--plain", "--run-dir", str(run_dir), *run_args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )


def new_run_args(preset: str, overrides: list[str]) -> list[str]:
    """The arguments of `localtrain run` for a new run: the preset and every override."""
    return ["--preset", preset, *[a for o in overrides for a in ("--set", o)]]


def console_tail(run_dir: Path, lines: int = 6) -> str:
    """The last lines a child run printed (its error, when it failed before any event)."""
    try:
        text = (run_dir / CONSOLE_LOG).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
