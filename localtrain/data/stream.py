"""Document streams with a resumable cursor: the protocol every source kind follows.

A source is read as a sequence of *tasks*: a file, a group of dump pages, one bz2
stream of a multistream dump, a group of dataset rows. Each task carries the cursor
that points just past it, so a preparation that commits after a task can resume there.
Tasks are turned into documents by a plain function (decode, parse, clean) that can run
in a worker process; `run_tasks` keeps at most a few tasks in flight and hands their
results back in source order, whatever the number of workers.

The kinds live beside this module: local files and code trees (`local`), MediaWiki
dumps (`dumpsource`), `hf:` datasets (`hf`); `sources` picks one for `data.source`.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Doc:
    """A cleaned document: `key` decides its split, `title` and `text` are what it holds."""

    key: str
    title: str
    text: str
    split: str | None = None
    """Set to "train" or "val" when the source decided the split (a small corpus); else the hash of `key` decides."""


@dataclass
class Result:
    """What one task gave: documents, drops counted by reason, bytes read, and a problem to report."""

    docs: list[Doc]
    dropped: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    articles: int = 0


Task = tuple[Callable[..., Result], tuple[Any, ...], dict[str, Any]]
"""(function, arguments, cursor after the task)"""


class Source:
    """A corpus read as tasks; `fingerprint` identifies its content before it is read."""

    name: str = ""
    kind: str = ""

    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def tasks(self, cursor: dict[str, Any] | None) -> Iterator[Task]:
        raise NotImplementedError

    def problems(self) -> list[str]:
        """Problems noticed while listing tasks (a cut-off dump), after the tasks ran out."""
        return []


# ---- running tasks -------------------------------------------------------------------------


def pool_context(separate: bool = False) -> multiprocessing.context.BaseContext:
    """The way worker processes start. `separate`: for a process that runs beside a training
    loop, whose threads a fork could copy mid-lock, so it starts a fresh interpreter."""
    # fork starts workers at once on Linux; elsewhere (macOS) fork is unsafe with system frameworks.
    return multiprocessing.get_context("spawn" if separate or not sys.platform.startswith("linux") else "fork")


def worker_count(threads: int) -> int:
    return max(1, threads or os.cpu_count() or 1)


def run_tasks(tasks: Iterator[Task], workers: int) -> Iterator[tuple[Result, dict[str, Any]]]:
    """Results of `tasks` in order, with each task's cursor; at most 2 x workers in flight."""
    if workers <= 1:
        for fn, args, cursor in tasks:
            yield fn(*args), cursor
        return
    pool = pool_context().Pool(workers)
    try:
        pending: collections.deque = collections.deque()
        for fn, args, cursor in tasks:
            pending.append((pool.apply_async(fn, args), cursor))
            if len(pending) >= 2 * workers:
                handle, c = pending.popleft()
                yield handle.get(), c
        while pending:
            handle, c = pending.popleft()
            yield handle.get(), c
    finally:
        pool.terminate()
        pool.join()
