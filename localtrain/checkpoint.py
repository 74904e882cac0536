"""Checkpoints: safetensors for tensors, JSON for the rest, written atomically.

    checkpoints/step-00000123/
        model.safetensors      weights under the shared names
        optimizer.safetensors  AdamW moments: "<name>.exp_avg", "<name>.exp_avg_sq"
        state.json             step, tokens, data cursor, RNG states, schedule, best val,
                               the config, and the size and sha256 of each file above
        COMPLETE               written last: the size and sha256 of state.json

A checkpoint is written into a temporary directory, every file fsynced, then renamed
into place and the parent fsynced, so a kill at any moment leaves either the whole
checkpoint or none; a write that fails (a full disk) removes its temporary directory
and leaves every earlier checkpoint as it was. Loading verifies every byte (state.json
by the hash in COMPLETE, the tensors by the hashes in state.json) and skips, with a
warning, any checkpoint that does not verify. A checkpoint written before COMPLETE held
a hash (an empty COMPLETE) is still read. No pickle anywhere.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localtrain import events as ev, ownership
from localtrain.errors import CheckpointError
from localtrain.files import file_digest, fsync_dir, make_dir, remove_tree, replace, replace_dir, write_synced

FORMAT = 1
PREFIX = "step-"
MARKER = "COMPLETE"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
BEST = "best"
UNCHECKED = ("run.run_dir", "run.overrides", "run.preset")
"""Config keys a resume may change without a warning: where the run lives and how it was started."""
# The temporary and replaced directories a checkpoint write leaves when killed: the only
# names remove_stale_temps deletes.
STALE = re.compile(r"\.(tmp|old)-(step-\d{8}|best)-\d+")


@dataclass
class Loaded:
    path: Path
    weights: dict[str, np.ndarray]
    moments: dict[str, np.ndarray]
    state: dict[str, Any]


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def write_dir(final: Path, files: dict[str, dict[str, np.ndarray]], state: dict[str, Any]) -> int:
    """Write tensors and state.json into `final` atomically; returns bytes written."""
    from safetensors.numpy import save as tensor_bytes

    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        remove_tree(tmp)  # this process's own, left by a write that failed
    make_dir(tmp)
    try:
        manifest = {}
        for name, arrays in files.items():
            contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
            write_synced(tmp / name, tensor_bytes(contiguous, metadata={"format": "localtrain"}))
            manifest[name] = {"bytes": (tmp / name).stat().st_size, "sha256": file_digest(tmp / name)}
        state = {**state, "format": FORMAT, "files": manifest}
        body = json.dumps(state, indent=1, sort_keys=True).encode()
        write_synced(tmp / STATE_FILE, body)
        seal = {STATE_FILE: {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}}
        write_synced(tmp / MARKER, json.dumps(seal, sort_keys=True).encode())
        fsync_dir(tmp)
        # An existing `final` is only a replaced best/ or a re-save of the same step.
        replace_dir(tmp, final)
    except BaseException:
        _discard(tmp)
        raise
    return sum(m["bytes"] for m in manifest.values())


def _discard(tmp: Path) -> None:
    """Remove the temporary directory of a failed write, freeing its space (best effort)."""
    with suppress(Exception):  # the write's own error is the one to report
        if tmp.exists():
            remove_tree(tmp)


def save(
    run_dir: Path,
    step: int,
    weights: dict[str, np.ndarray],
    moments: dict[str, np.ndarray],
    state: dict[str, Any],
    keep: int,
) -> tuple[Path, int]:
    """Write checkpoints/step-N, then delete all but the `keep` newest. Returns (path, bytes)."""
    root = run_dir / "checkpoints"
    make_dir(root)
    final = root / step_dir_name(step)
    files = {MODEL_FILE: weights}
    if moments:
        files[OPTIMIZER_FILE] = moments
    size = write_dir(final, files, {**state, "step": step})
    for old in complete_checkpoints(run_dir)[:-keep]:
        if old != final:
            remove_tree(old)
    return final, size


def save_best(run_dir: Path, weights: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    write_dir(run_dir / BEST, {MODEL_FILE: weights}, state)


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories holding a COMPLETE marker, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and (p / MARKER).is_file()]
    return sorted(found, key=step_of)


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete the temporary directories a process killed while writing a checkpoint left.

    Only in a run directory localtrain marked, and only entries named as write_dir names them.
    """
    ownership.require(run_dir, "run")
    removed = []
    for parent in (run_dir / "checkpoints", run_dir):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.is_dir() and not p.is_symlink() and STALE.fullmatch(p.name):
                    remove_tree(p)
                    removed.append(p)
    return removed


def load(path: Path, with_optimizer: bool = True) -> Loaded:
    """Read and verify one checkpoint directory; CheckpointError says what is wrong."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path} has no {MARKER} marker: it was not completely written.")
    state = _read_state(path)
    if state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state.get('format')!r}; this localtrain reads format {FORMAT}."
        )
    manifest = state.get("files", {})
    if MODEL_FILE not in manifest:
        raise CheckpointError(f"{path / STATE_FILE} lists no {MODEL_FILE}: the checkpoint is incomplete.")
    for name, info in manifest.items():
        if not isinstance(info, dict) or "/" in name or name.startswith("."):
            raise CheckpointError(f"{path / STATE_FILE} lists a file {name!r} that is not a checkpoint file.")
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing.")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"{file} is {size} bytes but was written as {info['bytes']} bytes: it is truncated or damaged."
            )
        if file_digest(file) != info["sha256"]:
            raise CheckpointError(f"{file} does not match the sha256 recorded when it was written: it is damaged.")
    try:
        weights = load_file(str(path / MODEL_FILE))
        moments = load_file(str(path / OPTIMIZER_FILE)) if with_optimizer and OPTIMIZER_FILE in manifest else {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} holds a tensor file that cannot be read: {exc}.") from exc
    return Loaded(path=path, weights=weights, moments=moments, state=state)


def _read_state(path: Path) -> dict[str, Any]:
    """state.json, checked against the size and sha256 that COMPLETE records for it."""
    try:
        seal_bytes = (path / MARKER).read_bytes()
        body = (path / STATE_FILE).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path / STATE_FILE} cannot be read ({exc.strerror or exc}).") from exc
    if seal_bytes.strip():  # (an empty COMPLETE: a checkpoint from before state.json was hashed)
        try:
            seal = json.loads(seal_bytes)[STATE_FILE]
            expected, size = str(seal["sha256"]), int(seal["bytes"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path / MARKER} is damaged: it does not hold the hash of {STATE_FILE}.") from exc
        if len(body) != size or hashlib.sha256(body).hexdigest() != expected:
            raise CheckpointError(f"{path / STATE_FILE} does not match the size and sha256 recorded in "
                                  f"{MARKER} when it was written: it was edited or is damaged.")
    try:
        state = json.loads(body)
    except ValueError as exc:
        raise CheckpointError(f"{path / STATE_FILE} is not valid JSON ({exc}): it is damaged.") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / STATE_FILE} does not hold a JSON object: it is damaged.")
    return state


def load_latest(run_dir: Path, emit: ev.Emit) -> Loaded | None:
    """The newest checkpoint that verifies; broken ones are skipped with a warning event."""
    for path in reversed(complete_checkpoints(run_dir)):
        try:
            return load(path)
        except CheckpointError as exc:
            emit(ev.Warning(message=f"Skipping checkpoint {path.name}: {exc}", code="checkpoint_skipped"))
    return None


def load_step(run_dir: Path, step: int) -> Loaded:
    """The checkpoint of `step`, verified; CheckpointError names the ones there are instead."""
    path = run_dir / "checkpoints" / step_dir_name(step)
    if path not in complete_checkpoints(run_dir):
        have = ", ".join(p.name for p in complete_checkpoints(run_dir)) or "none"
        raise CheckpointError(f"{run_dir} has no complete checkpoint at step {step} (it has: {have}). Resume from "
                              f"one of those, or from the newest with --resume --run-dir {run_dir}.")
    return load(path)


def set_aside_after(run_dir: Path, step: int) -> Path | None:
    """Move the checkpoints newer than `step` (and a best/ chosen after it) into a folder of their own.

    Resuming from an older checkpoint starts a new branch of the run: the newer
    checkpoints would be replaced as training passes their steps, and a later plain
    --resume would pick them up. They are kept, not deleted; returns where they went.
    """
    newer = [p for p in complete_checkpoints(run_dir) if step_of(p) > step]
    best = run_dir / BEST
    best_after = False
    if (best / STATE_FILE).is_file():
        with suppress(CheckpointError, TypeError, ValueError):
            best_after = int(_read_state(best).get("step", 0)) > step
    if not newer and not best_after:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = run_dir / "checkpoints" / f"set-aside-after-step-{step}-{stamp}"
    make_dir(aside)
    for p in newer + ([best] if best_after else []):  # best/ keeps its name there
        replace(p, aside / p.name)
    return aside


def config_drift(state: dict[str, Any], config: dict[str, dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """The keys whose value in `config` differs from the one the checkpoint was trained with
    (all but where the run lives and how it was started)."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return []
    drift = []
    for section in ("model", "data", "train", "run"):
        old, new = saved.get(section) or {}, config.get(section) or {}
        drift += [(f"{section}.{k}", old.get(k), new[k]) for k in new
                  if k in old and old.get(k) != new[k] and f"{section}.{k}" not in UNCHECKED]
    return drift


def bytes_on_disk(run_dir: Path) -> int:
    """Bytes of the complete checkpoints and best/ a run directory already holds."""
    dirs = [*complete_checkpoints(run_dir), run_dir / BEST]
    return sum(f.stat().st_size for d in dirs if d.is_dir() for f in d.iterdir() if f.is_file())
