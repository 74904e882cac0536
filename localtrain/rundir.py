"""The run directory on disk: its name, whose it is, where a resume starts, and what is still to write.

A run directory carries the `run` marker (`ownership`). A directory from a localtrain
that wrote no markers is recognised by what it holds: a config.toml localtrain reads,
and an events.jsonl that starts with a localtrain event or a complete checkpoint; it is
adopted (the marker written) when a run uses it, as is a folder holding nothing but a
control file or a console log (a controller readied it). Anything else that is not
empty is refused before a byte is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from contextlib import suppress
from pathlib import Path
from typing import Any

from localtrain import checkpoint, config as cfg, events as ev, ownership
from localtrain.errors import CheckpointError, LocaltrainError
from localtrain.files import checked, remove_file
from localtrain.runfiles import CONFIG_FILE, CONSOLE_LOG, CONTROL_FILE, EVENTS_FILE, LOCK_FILE, PLAN_FILE, RUNS_ROOT

READIED_BY_TOOLS = (CONTROL_FILE, CONSOLE_LOG)
ADVICE = ("Choose a new or empty directory with --run-dir (e.g. a folder inside it), or leave --run-dir out for "
          "runs/<data or preset>-<date-time>.")


def run_name(config: cfg.Config) -> str:
    """The name of a new run's directory before its date and time: the data's name when the
    command line chose the data (`notes` for --data ~/notes), else the preset's."""
    if any(o.split("=", 1)[0].strip() == "data.source" for o in config.run.overrides):
        from localtrain.data.sources import source_name

        name = source_name(config.data.source)
        if name:
            return name
    return config.run.preset


def new_run_dir(name: str) -> Path:
    """runs/<name>-<date-time>, with a suffix if two runs start in the same second."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = RUNS_ROOT / f"{name}-{stamp}", 1
    while path.exists():
        n += 1
        path = RUNS_ROOT / f"{name}-{stamp}-{n}"
    return path


UNSTARTED_FILES = (CONFIG_FILE, EVENTS_FILE, LOCK_FILE, "tokenizer.model", ownership.MARKER)
"""What a run writes before training starts (its marker last: removed last)."""
ATOMIC_FILES = (CONFIG_FILE, PLAN_FILE, "tokenizer.model", ownership.MARKER)
"""The files a run replaces whole (files.write_atomic), through a temporary beside each."""


def remove_unstarted(run_dir: Path, created: list[Path]) -> None:
    """Remove a run directory this process created when its data failed before training started.

    A data error (no documents, no validation split, an unreadable file) found before the
    first step leaves nothing behind to be listed as a failed run: the error is printed and
    the same command can be run again. Only the files the run wrote are removed, and only
    from directories it created and marked; anything else found there keeps the directory as it is.
    """
    # plan.json is written once the data is prepared and the model built: from then on a failed run keeps its directory.
    if (run_dir / PLAN_FILE).exists() or run_dir not in created or ownership.kind_of(run_dir) != "run":
        return
    with suppress(OSError, LocaltrainError):  # something else appeared in it meanwhile, or the disk refused: it stays
        if any(p.name not in UNSTARTED_FILES for p in run_dir.iterdir()):
            return
        for name in UNSTARTED_FILES:
            remove_file(run_dir / name)
        for d in created:  # the run directory first, then parents it created (runs/), if empty
            checked("remove", d, os.rmdir, d)


def looks_like_run(directory: Path) -> bool:
    """A run directory written before markers existed: a readable localtrain config and its events or checkpoints."""
    conf = directory / CONFIG_FILE
    if not conf.is_file():
        return False
    try:
        cfg.resolve(base=cfg.read_toml(conf))
    except LocaltrainError:
        return False
    if checkpoint.complete_checkpoints(directory):
        return True
    try:
        with open(directory / EVENTS_FILE, "rb") as f:
            first = json.loads(f.readline(1 << 16))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(first, dict) and first.get("type") in ev.EVENT_TYPES


def adoptable(directory: Path) -> bool:
    """A run directory from before markers, or one a controller readied for a run (only its control file or
    console log: files a run never replaces)."""
    return looks_like_run(directory) or ownership.entries_are(directory, lambda n: n in READIED_BY_TOOLS)


def check(run_dir: Path, flag: str = "--run-dir") -> None:
    """Refuse, before anything is written, a run directory that holds what localtrain did not write."""
    ownership.check(run_dir, "run", adoptable, f"{flag} {run_dir}", ADVICE)


def claim(run_dir: Path) -> bool:
    """Create (or adopt) the run directory with its marker; whether it was created now."""
    return ownership.claim(run_dir, "run", adoptable, f"--run-dir {run_dir}", ADVICE)


def resume_step(resume: bool | str) -> int | None:
    """The step of `--resume RUN/checkpoints/step-N`; None for any other --resume."""
    if not isinstance(resume, str) or resume == "auto":
        return None
    path = Path(resume).expanduser()
    match = re.fullmatch(re.escape(checkpoint.PREFIX) + r"(\d+)", path.name)
    return int(match.group(1)) if match and path.parent.name == "checkpoints" else None


def resume_point(run_dir: Path, step: int | None, emit: ev.Emit) -> checkpoint.Loaded | None:
    """The checkpoint a resume starts from: step N when one was named, else the newest that verifies.

    Resuming from an older step sets the newer checkpoints aside (kept, not deleted),
    so that the run's checkpoints stay one line of training.
    """
    if step is None:
        return checkpoint.load_latest(run_dir, emit)
    try:
        loaded = checkpoint.load_step(run_dir, step)
    except CheckpointError as exc:
        raise CheckpointError(f"--resume {run_dir}/checkpoints/{checkpoint.step_dir_name(step)}: {exc}") from None
    aside = checkpoint.set_aside_after(run_dir, step)
    if aside is not None:
        emit(ev.Warning(code="checkpoints_set_aside", message=(
            f"Resuming from step {step}, an older checkpoint: the newer checkpoints (and a best/ chosen after "
            f"step {step}) were moved, unchanged, to {aside}. Move them back into {run_dir / 'checkpoints'} and "
            f"resume without a step to continue from them instead.")))
    return loaded


def drift_warnings(loaded: checkpoint.Loaded, config: cfg.Config,
                   changes: list[tuple[str, Any, Any]]) -> list[str]:
    """Keys of config.toml that differ from the configuration the checkpoint was trained with.

    Overrides given on this command line (`changes`) are reported on their own already.
    """
    given = {key for key, _, _ in changes}
    drift = [d for d in checkpoint.config_drift(loaded.state, config.to_dict()) if d[0] not in given]
    if drift:
        return [f"config.toml sets {key} = {new!r}, but {loaded.path.name} was trained with {old!r}: the run "
                f"continues with {new!r}. Restore the file to continue as it was trained." for key, old, new in drift]
    saved = loaded.state.get("config_fingerprint")
    if "config" not in loaded.state and saved and saved != config.fingerprint() and not changes:
        return [f"config.toml differs from the configuration {loaded.path.name} was trained with (a checkpoint "
                f"this old does not record which keys): the run continues with config.toml as it is now."]
    return []


def still_to_write(needed: dict[str, int], run_dir: Path, data_dir: Path | None) -> dict[str, int]:
    """The disk a run still needs: its total need less the checkpoints and prepared data already on disk."""
    out = dict(needed)
    if "checkpoints" in out and run_dir.is_dir():
        out["checkpoints"] = max(0, out["checkpoints"] - checkpoint.bytes_on_disk(run_dir))
    if "data" in out and data_dir is not None and data_dir.is_dir():
        from localtrain.data.shards import read_manifest

        done = False
        with suppress(LocaltrainError):
            done = (read_manifest(data_dir) or {}).get("complete") is True
        held = sum(f.stat().st_size for f in data_dir.iterdir() if f.is_file())
        out["data"] = 0 if done else max(0, out["data"] - held)
    return out


def with_disk_still_needed(planned: Any, run_dir: Path, config: cfg.Config) -> Any:
    """`planned` with `disk_needed` cut to what is still to write (for the disk check only)."""
    from localtrain.data.prepare import prepared_dir

    data_dir: Path | None = None
    with suppress(LocaltrainError):
        data_dir = prepared_dir(config.data)
    return dataclasses.replace(planned, disk_needed=still_to_write(planned.disk_needed, run_dir, data_dir))
