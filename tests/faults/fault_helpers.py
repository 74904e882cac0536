"""Shared by the fault-injection tests: the seed, the small runs, and the write-layer injector."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from conftest import TINY, sets
from localtrain import checkpoint, events as ev, files

SEED = int(os.environ.get("LOCALTRAIN_FAULT_SEED") or random.SystemRandom().randrange(1 << 31))
"""Every random choice of the suite comes from this; a failure prints it (rerun with LOCALTRAIN_FAULT_SEED)."""

# A run with every kind of write in 8 steps: periodic checkpoints (one pruned), best/, events.
RUN = TINY + ["train.sample_every=0", "run.threads=1", "train.checkpoint_every=4", "train.eval_every=4",
              "train.keep_checkpoints=1", "train.eval_batches=1"]
STEPS = "8"
MESSAGES = {errno.ENOSPC: "No space left", errno.EIO: "I/O error"}


def run_args(corpus: Path, run_dir: Path | str, *extra: str) -> list[str]:
    return ["run", "--data", str(corpus), "--run-dir", str(run_dir), "--plain", "--max-steps", STEPS,
            *sets(RUN), *extra]


def site(path: str | Path) -> str:
    """A write site: the path (from the working directory) with every number (steps, pids) made generic."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.relative_to(Path.cwd())
        except ValueError:
            pass
    return re.sub(r"\d+", "N", str(p))


class Injector:
    """Patches the write layer (`files._do`): counts each site's operations, or fails the n-th of one site."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.target: tuple[str, int, int] | None = None
        self.fired: str | None = None
        self.real = files._do

    def __call__(self, op: str, path: Path, fn, *args):
        key = site(path)
        self.counts[key] += 1
        if self.target and self.fired is None and key == self.target[0] and self.counts[key] == self.target[1]:
            self.fired = f"{op} {path}"
            code = self.target[2]
            raise OSError(code, os.strerror(code))
        return self.real(op, path, fn, *args)

    @contextmanager
    def failing(self, monkeypatch, where: str | None = None, nth: int = 0, code: int = 0) -> Iterator[Injector]:
        self.counts, self.fired = Counter(), None
        self.target = (where, nth, code) if where else None
        monkeypatch.setattr(files, "_do", self)
        try:
            yield self
        finally:
            monkeypatch.setattr(files, "_do", self.real)


def nothing_lost(run_dir: Path) -> None:
    """Every checkpoint the run dir calls complete verifies, and its events read back."""
    for path in [*checkpoint.complete_checkpoints(run_dir), run_dir / "best"]:
        if (path / checkpoint.MARKER).is_file():
            checkpoint.load(path)
    if (run_dir / "events.jsonl").exists():
        ev.read_events(run_dir / "events.jsonl")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part in skip for part in p.relative_to(root).parts)}
