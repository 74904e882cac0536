"""The directory prepared data lives in: claimed as localtrain's, locked, and verified before use.

`opened` is how `prepare()` enters a directory: it claims it (the `prepared` marker; a
folder that holds other things is refused, and so is one that overlaps the data
source), takes its lock (a second preparation of the same data waits), reads the
manifest and verifies every byte it records (`integrity.verify`). A directory that
fails is moved aside, with a warning naming both paths, and a fresh one is entered.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localtrain import ownership
from localtrain.data import integrity
from localtrain.data.sources import SourceSpec
from localtrain.data.shards import MANIFEST, SEEN_FILE, SHARD_FILE, DamagedData, read_manifest
from localtrain.errors import DataError
from localtrain.events import Emit, Warning
from localtrain.files import checked


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the lock of `directory` (the one at its path now, if it was moved aside meanwhile)."""
    path = directory / ".lock"
    while True:
        with checked("open", path, open, path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # a second preparation of the same data waits for the first
            try:
                if path.is_file() and os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                    yield
                    return
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        # The directory was moved aside (damaged) while this process waited: lock the new one.
        ownership.claim(directory, "prepared", None, str(directory), "")


ATOMIC_FILES = (MANIFEST, "tokenizer.model")
"""The files a preparation replaces whole (files.write_atomic), through a temporary beside each."""


def looks_prepared(in_cache: bool) -> ownership.Recognise:
    """A prepared directory from before markers: it holds a manifest (in the cache: or only prepare's files)."""
    names = {MANIFEST, "tokenizer.model", SEEN_FILE, ".lock"}

    def ours(name: str) -> bool:
        return name in names or SHARD_FILE.fullmatch(name) is not None or name.startswith(
            tuple(f".{n}.tmp" for n in ATOMIC_FILES))

    def recognise(directory: Path) -> bool:
        try:
            if read_manifest(directory) is not None:
                return True
        except DamagedData:
            return in_cache or ownership.entries_are(directory, ours)
        return in_cache and (directory / ".lock").is_file() and ownership.entries_are(directory, ours)

    return recognise


def claim(directory: Path, out_dir: Path | str | None, spec: SourceSpec) -> None:
    """Make `directory` prepared data of localtrain's, refusing a folder that holds other things."""
    flag = f"--out {out_dir}" if out_dir else f"the cache directory {directory}"
    advice = ("Choose a new or empty --out directory." if out_dir else
              "Point $LOCALTRAIN_CACHE or data.cache_dir at another directory.")
    root = spec.fingerprint.get("source") if spec.fingerprint.get("kind") in (
        "files", "wiki-dump", "wiki-multistream") else None
    if root and (ownership.contains(directory, Path(root)) or ownership.contains(Path(root), directory)):
        raise ownership.NotOurs(
            f"{flag}: {directory} and the data source {root} overlap (one holds the other), so the prepared "
            f"files would become part of the source or replace it. Nothing was written. {advice}")
    ownership.claim(directory, "prepared", looks_prepared(out_dir is None), flag, advice)


@contextlib.contextmanager
def opened(directory: Path, key: str, out_dir: Path | str | None, spec: SourceSpec, emit: Emit,
              threads: int) -> Iterator[tuple[dict[str, Any] | None, str]]:
    """Lock `directory` and yield its manifest (None: nothing prepared yet) once every byte of it verified.

    A directory that fails is moved aside with a warning and a fresh one yielded. Also
    yields what the verification read, for the done event.
    """
    for attempt in range(3):
        claim(directory, out_dir, spec)
        with locked(directory):
            ownership.remove_dead_temporaries(directory, "prepared", (*ATOMIC_FILES, ownership.MARKER))
            try:
                manifest = read_manifest(directory)
                if manifest is not None and manifest.get("cache_key") != key:
                    if out_dir is not None:
                        raise DataError(
                            f"`{directory}` holds data prepared from another source or with other settings "
                            f"({manifest.get('source')!r}). Nothing was changed. Choose another --out directory, "
                            f"or delete that one to prepare it afresh.")
                    raise DamagedData(f"{directory / MANIFEST} belongs to other data than its directory's key.")
                checked_text = ""
                if manifest is not None:
                    nbytes, seconds = integrity.verify(directory, manifest, threads)
                    checked_text = f"; every byte verified ({nbytes / 1e6:,.1f} MB in {seconds:.2f} s)"
            except DamagedData as exc:
                if attempt == 2:
                    raise
                aside = integrity.set_aside(directory)
                emit(Warning(code="damaged_data", message=(
                    f"The prepared data in {directory} is damaged ({exc}). It was moved, unchanged, to {aside} "
                    f"and is prepared again; delete {aside} once you no longer need it.")))
                continue
            yield manifest, checked_text
            return
