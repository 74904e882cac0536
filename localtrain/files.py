"""Durable writes: a file counts once it is fsynced, a rename once its directory is."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    if sys.platform == "win32":
        return  # directories cannot be opened for fsync there
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write_synced(tmp, data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2, macOS renamex_np); False where
    the system or the filesystem cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        return libc.renamex_np(os.fsencode(a), os.fsencode(b), rename_swap) == 0
    return False


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete directory `tmp` to `final`, replacing any directory there, and make it durable.

    A directory cannot be renamed over a non-empty one, so where the system can the two are
    swapped in one step: a kill at any moment leaves `final` whole, old or new. Elsewhere the old
    one is moved aside first, and a kill between the two renames leaves no `final`.
    """
    if final.exists():
        if _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # it holds the old directory now
        else:
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
