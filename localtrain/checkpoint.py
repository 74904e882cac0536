"""Checkpoints: safetensors for tensors, JSON for the rest, written atomically.

    checkpoints/step-00000123/
        model.safetensors      weights under the shared names
        optimizer.safetensors  AdamW moments: "<name>.exp_avg", "<name>.exp_avg_sq"
        state.json             step, tokens, data cursor, RNG states, schedule, best val,
                               config hash, and the size and sha256 of each file above
        COMPLETE               written last

A checkpoint is written into a temporary directory, every file fsynced, then renamed
into place and the parent fsynced, so a kill at any moment leaves either the whole
checkpoint or none. Loading verifies sizes and hashes and skips, with a warning, any
checkpoint that does not verify. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localtrain import events as ev
from localtrain.errors import CheckpointError
from localtrain.files import fsync_dir, replace_dir, write_synced

FORMAT = 1
PREFIX = "step-"
MARKER = "COMPLETE"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


@dataclass
class Loaded:
    path: Path
    weights: dict[str, np.ndarray]
    moments: dict[str, np.ndarray]
    state: dict[str, Any]


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_tensors(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={"format": "localtrain"})
    write_synced(path, data)


def write_dir(final: Path, files: dict[str, dict[str, np.ndarray]], state: dict[str, Any]) -> int:
    """Write tensors and state.json into `final` atomically; returns bytes written."""
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    manifest = {}
    for name, arrays in files.items():
        _save_tensors(tmp / name, arrays)
        manifest[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    state = {**state, "format": FORMAT, "files": manifest}
    write_synced(tmp / STATE_FILE, json.dumps(state, indent=1, sort_keys=True).encode())
    write_synced(tmp / MARKER, b"")
    fsync_dir(tmp)
    # An existing `final` is only a replaced best/ or an identical re-save of the same step.
    replace_dir(tmp, final)
    return sum(m["bytes"] for m in manifest.values())


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
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    files = {MODEL_FILE: weights}
    if moments:
        files[OPTIMIZER_FILE] = moments
    size = write_dir(final, files, {**state, "step": step})
    for old in complete_checkpoints(run_dir)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final, size


def save_best(run_dir: Path, weights: dict[str, np.ndarray], state: dict[str, Any]) -> Path:
    final = run_dir / "best"
    write_dir(final, {MODEL_FILE: weights}, state)
    return final


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories holding a COMPLETE marker, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and (p / MARKER).is_file():
            found.append(p)
    return sorted(found, key=step_of)


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temporary directories left by a process killed while writing."""
    removed = []
    for parent in (run_dir / "checkpoints", run_dir):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.is_dir() and p.name.startswith((".tmp-", ".old-")):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
    return removed


def load(path: Path, with_optimizer: bool = True) -> Loaded:
    """Read and verify one checkpoint directory; CheckpointError says what is wrong."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path} has no {MARKER} marker: it was not completely written.")
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / STATE_FILE} cannot be read ({exc}).") from exc
    if state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state.get('format')!r}; this localtrain reads format {FORMAT}."
        )
    manifest = state.get("files", {})
    if MODEL_FILE not in manifest:
        raise CheckpointError(f"{path / STATE_FILE} lists no {MODEL_FILE}: the checkpoint is incomplete.")
    for name, info in manifest.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing.")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"{file} is {size} bytes but was written as {info['bytes']} bytes: it is truncated or damaged."
            )
        if _sha256(file) != info["sha256"]:
            raise CheckpointError(f"{file} does not match the sha256 recorded when it was written: it is damaged.")
    try:
        weights = load_file(str(path / MODEL_FILE))
        moments = (
            load_file(str(path / OPTIMIZER_FILE))
            if with_optimizer and OPTIMIZER_FILE in manifest
            else {}
        )
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} holds a tensor file that cannot be read: {exc}.") from exc
    return Loaded(path=path, weights=weights, moments=moments, state=state)


def load_latest(run_dir: Path, emit: ev.Emit) -> Loaded | None:
    """The newest checkpoint that verifies; broken ones are skipped with a warning event."""
    for path in reversed(complete_checkpoints(run_dir)):
        try:
            return load(path)
        except CheckpointError as exc:
            emit(ev.Warning(message=f"Skipping checkpoint {path.name}: {exc}", code="checkpoint_skipped"))
    return None
