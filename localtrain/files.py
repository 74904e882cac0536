"""Every write localtrain makes to disk, and what an OS failure of one tells the user.

A file counts once it is fsynced, a rename once its directory is. Each write, append,
fsync, rename, truncation, directory creation and deletion passes through `_do`, and an
OS error from any of them becomes one `DiskError`: the path, the figure (the free space
of a full disk, the mode of a refused one) and what to do. Nothing already written is
lost by a failed write: a temporary file or directory of the failed operation is removed
and the file it would have replaced stays as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable, TypeVar

from localtrain.errors import LocaltrainError

HASH_BLOCK = 8 << 20

T = TypeVar("T")

VERBS = {
    "write": "writing", "append": "appending to", "fsync": "flushing", "replace": "renaming into",
    "mkdir": "creating the directory", "remove": "deleting", "truncate": "truncating", "open": "opening",
}


def _do(op: str, path: Path, fn: Callable[..., T], *args: Any) -> T:
    """Perform one disk operation: `op` (a key of VERBS) on `path`, by calling `fn(*args)`.

    The one place every write reaches the OS (the fault-injection tests patch it).
    """
    return fn(*args)


def checked(op: str, path: Path, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` through `_do`, its OSError turned into a DiskError about `path`."""
    try:
        return _do(op, path, fn, *args)
    except OSError as exc:
        raise disk_error(exc, path, op) from exc


def file_hasher(path: Path, algorithm: str = "sha256", size: int | None = None) -> Any:
    """A hashlib object fed the first `size` bytes of `path` (all of it when None), read in blocks."""
    h = hashlib.new(algorithm)
    left = math.inf if size is None else size
    with open(path, "rb") as f:
        while left > 0 and (block := f.read(min(HASH_BLOCK, left))):
            h.update(block)
            left -= len(block)
    return h


def file_digest(path: Path, algorithm: str = "sha256", size: int | None = None) -> str:
    """The hex digest of the first `size` bytes of `path` (all of it when None)."""
    return file_hasher(path, algorithm, size).hexdigest()


def human(n: float) -> str:
    """A byte count in the unit that shows its size: 512 B, 12.3 MiB, 4.0 GiB."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def parse_size(text: str) -> int:
    """Bytes in "6GB", "512 MiB", "1.5g" or a plain number."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def nearest_existing(path: Path) -> Path:
    """`path` if it exists, else its nearest existing parent (where its filesystem is)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent)."""
    try:
        return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return None


class DiskError(LocaltrainError):
    """An OS error while localtrain wrote to disk, with the path and what to do."""

    def __init__(self, message: str, path: Path, code: int | None) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.errno = code

    def __reduce__(self) -> tuple[Any, ...]:  # it crosses from a preparation's process to the run's
        return (type(self), (str(self), self.path, self.errno))


def _blocking_file(path: Path) -> Path | None:
    """The first part of `path` that exists and is not a directory (what makes ENOTDIR)."""
    p = Path(path).absolute()
    for part in [*reversed(p.parents), p]:
        if part.exists() and not part.is_dir():
            return part
    return None


def disk_error(exc: OSError, path: Path | str | None, op: str = "write") -> DiskError:
    """The DiskError for an OS error of `op` on `path`: one paragraph naming the path, the figure and the fix."""
    path = Path(path if path is not None else (exc.filename or "?"))
    code = exc.errno
    verb = VERBS.get(op, op)
    name = errno.errorcode.get(code or 0, "error")
    kept = "Everything written before is kept"
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path)
        figure = f"{human(free)} free" if free is not None else "free space unknown"
        what = "the disk is full" if code == errno.ENOSPC else "the disk quota is used up"
        message = (f"No space left while {verb} {path}: {what} ({figure} on that filesystem). {kept}. Free some "
                   f"space, or point --run-dir, --out or $LOCALTRAIN_CACHE at a bigger disk, then run the same "
                   f"command again (with --resume for a run).")
    elif code == errno.EROFS:
        message = (f"{path} is on a read-only filesystem, so localtrain cannot go on {verb} it ({name}). Use a "
                   f"writable directory (--run-dir, --out or $LOCALTRAIN_CACHE), or remount the disk read-write "
                   f"and run the command again. Nothing there was changed.")
    elif code in (errno.EACCES, errno.EPERM):
        where = path if path.exists() else path.parent
        try:
            st = where.stat()
            figure = f"{where} has mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}; you are uid {os.getuid()}"
        except (OSError, AttributeError):
            figure = f"{where} cannot be inspected"
        message = (f"Permission denied while {verb} {path} ({name}: {figure}). Give yourself write access to "
                   f"{where}, or choose a directory you can write to. {kept}.")
    elif code == errno.ENOTDIR:
        blocker = _blocking_file(path)
        message = (f"Cannot go on {verb} {path}: {blocker or 'a part of that path'} is a file, not a directory "
                   f"({name}). Move that file away or choose another path.")
    elif code == errno.EEXIST:
        kind = "a directory" if path.is_dir() else "a file" if path.exists() else "something"
        message = (f"Cannot go on {verb} {path}: {kind} of that name is already there ({name}). Move it away or "
                   f"choose another path; localtrain does not replace what it did not write.")
    elif code == errno.EISDIR:
        message = (f"Cannot go on {verb} {path}: it is a directory where localtrain writes a file ({name}). Move "
                   f"it away or choose another path.")
    elif code == errno.EIO:
        message = (f"The disk reported an I/O error ({name}) while {verb} {path}: the device or its filesystem "
                   f"may be failing. Check it (dmesg, fsck, SMART), copy what matters elsewhere and run the "
                   f"command again on a healthy disk. {kept}; anything damaged is detected when read back.")
    else:
        message = (f"The operating system refused {verb} {path}: {exc.strerror or exc} ({name}). Fix the cause "
                   f"or choose another path, then run the command again. {kept}.")
    return DiskError(message, path, code)


# -- the operations ----------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_synced(path: Path, data: bytes, shown: Path | None = None) -> None:
    """Create or overwrite `path` with `data` and fsync it (an error names `shown`, if given)."""
    shown = shown or path
    fd = checked("open", shown, os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        checked("write", shown, _write_all, fd, data)
        checked("fsync", shown, os.fsync, fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    if sys.platform != "win32":  # directories cannot be opened for fsync there
        fsync_file(path)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write_synced(tmp, data.encode("utf-8") if isinstance(data, str) else data, shown=path)
        checked("replace", path, os.replace, tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    fsync_dir(path.parent)


def read_table(path: Path) -> dict[str, Any]:
    """The JSON object kept in `path` (a table of measurements); empty where there is none yet or
    what is there is not one."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def write_table(path: Path, table: dict[str, Any]) -> None:
    """Keep `table` in `path` for `read_table`, replacing the file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(table, indent=1, sort_keys=True))


def _discard(path: Path) -> None:
    """Remove a temporary file of a failed write (best effort: the error that matters is raised already)."""
    with suppress(OSError):
        os.unlink(path)


def make_dir(path: Path) -> None:
    """Create `path` (and its parents) if it is not a directory yet."""
    if not Path(path).is_dir():
        checked("mkdir", path, Path(path).mkdir, 0o777, True, True)


def replace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst` (replacing a file there) and make the rename durable."""
    checked("replace", dst, os.replace, src, dst)
    fsync_dir(Path(dst).parent)


def remove_tree(path: Path) -> None:
    """Delete a directory localtrain wrote (callers check that it is theirs)."""
    checked("remove", path, shutil.rmtree, path)


def remove_file(path: Path) -> None:
    """Delete one file localtrain wrote; a file already gone is fine."""
    try:
        checked("remove", path, os.unlink, path)
    except DiskError as exc:
        if exc.errno != errno.ENOENT:
            raise


def truncate(path: Path, size: int) -> None:
    """Cut `path` to `size` bytes and fsync it."""
    fd = checked("open", path, os.open, path, os.O_WRONLY)
    try:
        checked("truncate", path, os.ftruncate, fd, size)
        checked("fsync", path, os.fsync, fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = checked("open", path, os.open, path, os.O_RDONLY)
    try:
        checked("fsync", path, os.fsync, fd)
    finally:
        os.close(fd)


def append(path: Path, data: bytes) -> None:
    """Append `data` to `path` (created if missing); `fsync_file` makes it durable."""
    with Appender(path) as f:
        f.write(data)


class Appender:
    """A file opened for appending (or, with `truncate`, rewritten from empty), one write at a time."""

    def __init__(self, path: Path, truncate: bool = False) -> None:
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
        self.fd: int | None = checked("open", self.path, os.open, self.path, flags, 0o644)

    def write(self, data: bytes) -> None:
        assert self.fd is not None, "write after close"
        checked("append", self.path, _write_all, self.fd, data)

    def sync(self) -> None:
        if self.fd is not None:
            checked("fsync", self.path, os.fsync, self.fd)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ends_with_newline(path: Path) -> bool:
    """Whether `path` is empty, missing, or ends with a newline (so an appended line starts a line)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return True


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
    one is renamed aside first and deleted only once the new one is in place; if the second
    rename fails, the old one is put back. Callers check that `final` is theirs to replace.
    """
    if not final.exists():
        checked("replace", final, os.replace, tmp, final)
        fsync_dir(final.parent)
    elif _exchange(tmp, final):
        fsync_dir(final.parent)
        remove_tree(tmp)  # it holds the old directory now
    else:
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        checked("replace", old, os.replace, final, old)
        try:
            checked("replace", final, os.replace, tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        fsync_dir(final.parent)  # the new one is in place for good before the old one goes
        remove_tree(old)
