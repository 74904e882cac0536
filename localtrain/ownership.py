"""Which directories are localtrain's own: the marker, claiming a directory, and the delete rule.

A directory localtrain creates for a run, an export, prepared data or a download
carries a `.localtrain` file naming its kind. localtrain deletes or replaces entries
only inside a directory marked with the right kind, and only entries it writes there
(each caller names them exactly). A directory without the marker is claimed only when
it is new or empty, or when its contents show that a localtrain from before markers
existed wrote it (each kind has its own test, given by the caller); the marker is then
written, once. Anything else is refused with a message, and `--force` changes none of
this.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from localtrain import __version__
from localtrain.errors import LocaltrainError
from localtrain.files import make_dir, remove_file, write_atomic

MARKER = ".localtrain"
KINDS = {
    "run": "a run directory",
    "export": "an exported model",
    "prepared": "prepared data",
    "download": "a download folder",
}

Recognise = Callable[[Path], bool]
"""Whether a directory without a marker was written by localtrain as this kind."""


class NotOurs(LocaltrainError):
    """A directory localtrain would write into holds something it did not write."""


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of `directory`, or None when it has none (or one that cannot be read)."""
    try:
        obj = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("kind"), str) else None


def kind_of(directory: Path) -> str | None:
    marker = read_marker(directory)
    return marker["kind"] if marker else None


def write_marker(directory: Path, kind: str, **extra: Any) -> None:
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    body = {"kind": kind, "written_by": f"localtrain {__version__}", "created": created, **extra}
    write_atomic(Path(directory) / MARKER, json.dumps(body, indent=1, sort_keys=True) + "\n")


def check(directory: Path, kind: str, recognise: Recognise | None, what: str, advice: str) -> None:
    """Raise NotOurs unless `directory` may become (or is) localtrain's `kind` directory.

    `what` names it for the user (e.g. "--run-dir runs/x"); `advice` says what to do instead.
    """
    d = Path(directory)
    if not d.exists():
        return
    if not d.is_dir():
        raise NotOurs(f"{what}: {d} is a file, not a directory. Nothing was written. {advice}")
    found = kind_of(d)
    if found == kind:
        return
    if found is not None:
        raise NotOurs(f"{what}: {d} holds {KINDS.get(found, found)} of localtrain, not {KINDS[kind]} (its "
                      f"{MARKER} says {found!r}). Nothing was written. {advice}")
    try:
        entries = sorted(p.name for p in d.iterdir())
    except OSError as exc:
        raise NotOurs(f"{what}: {d} cannot be listed ({exc.strerror or exc}). Nothing was written. {advice}") from exc
    if not entries or (recognise is not None and recognise(d)):
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise NotOurs(
        f"{what}: {d} is not empty ({shown}) and localtrain did not create it (it has no {MARKER} marker), so "
        f"localtrain will not write there: it could replace or delete files of the same names. Nothing was "
        f"written. {advice}"
    )


def claim(directory: Path, kind: str, recognise: Recognise | None, what: str, advice: str) -> bool:
    """Make `directory` localtrain's `kind` directory (creating it with its parents if needed).

    Returns whether the directory was created now. Raises NotOurs as `check` does.
    """
    d = Path(directory)
    check(d, kind, recognise, what, advice)
    created = not d.exists()
    make_dir(d)
    if kind_of(d) != kind:
        write_marker(d, kind)
    return created


def require(directory: Path, kind: str) -> None:
    """Before deleting inside `directory`: it must carry the `kind` marker."""
    found = kind_of(directory)
    if found != kind:
        raise NotOurs(f"Refusing to delete inside {directory}: it is not {KINDS[kind]} localtrain created "
                      f"(its {MARKER} marker says {found!r}). Nothing was deleted.")


def contains(outer: Path, inner: Path) -> bool:
    """Whether `inner` is `outer` or lies inside it (after resolving links)."""
    a, b = Path(outer).resolve(), Path(inner).resolve()
    return a == b or a in b.parents


def entries_are(directory: Path, allowed: Callable[[str], bool]) -> bool:
    """Whether every entry of `directory` is one `allowed` names (a test for pre-marker directories)."""
    try:
        return all(allowed(name) for name in os.listdir(directory))
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_dead_temporaries(directory: Path, kind: str, names: tuple[str, ...]) -> None:
    """Remove what writes of these files killed between their temporary and its rename left
    (`.NAME.tmpPID`, files.write_atomic), where that process is gone, inside a directory carrying
    the `kind` marker; call it with the directory's lock, or as its only writer."""
    require(directory, kind)
    pattern = re.compile(rf"\.({'|'.join(map(re.escape, names))})\.tmp(\d+)")
    for path in Path(directory).iterdir():
        m = pattern.fullmatch(path.name)
        if m and path.is_file() and not pid_alive(int(m.group(2))):
            remove_file(path)
