"""Training while the data is still being prepared: progressive phases.

With `data.phases` set, `localtrain run` starts the preparation in a process of its own
(`BackgroundPreparation`) and begins training as soon as the manifest says phase 1 is
ready. `GrowingPhases` gives the loader each phase's training tokens, reading the
manifest again only while a phase it needs is not ready yet. The other processes of a
data-parallel job on the same node start none: they read the same manifest.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localtrain.config import DataConfig
from localtrain.data.commit import documents
from localtrain.data.loader import POLL_SECONDS
from localtrain.data.prepare import Cancelled, prepare
from localtrain.data.prepared import PreparedData
from localtrain.data.shards import DamagedData, read_manifest
from localtrain.data.stream import pool_context
from localtrain.errors import LocaltrainError
from localtrain.events import Emit

PROGRESS_SECONDS = 30.0
"""Progress events of a preparation behind a training run are spaced wider than alone."""


def nothing_to_check() -> None:
    """The check of a process that runs no preparation of its own."""


class GrowingPhases:
    """The training tokens of each phase of a prepared directory whose later phases may still be written."""

    def __init__(self, directory: Path, check: Callable[[], None] = nothing_to_check) -> None:
        self.dir = directory
        self.check = check
        self.prepared = PreparedData.from_dir(directory)
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.prepared.phases)

    def ready(self, phase: int) -> bool:
        if self.prepared.phases[phase]["ready"]:
            return True
        self.check()
        self.prepared = PreparedData.from_dir(self.dir)
        return self.prepared.phases[phase]["ready"]

    def tokens(self, phase: int) -> Any:
        if phase not in self._open:
            if not self.ready(phase):
                raise RuntimeError(f"phase {phase + 1} of {self.dir} is not ready")
            for old in [p for p in self._open if p < phase - 1]:
                del self._open[old]
            self._open[phase] = self.prepared.load("train", limit=self.prepared.phases[phase]["train_tokens"])
        return self._open[phase]

    def describe(self, phase: int) -> str:
        """What a run waiting for `phase` waits for, with how far the preparation has come."""
        ph = self.prepared.phases[phase]
        docs = documents(self.prepared.meta)
        what = "every document" if ph["documents"] is None else f"the first {ph['documents']:,} documents"
        return (f"Waiting for phase {phase + 1} of {len(self)} ({what}) to be prepared: {docs:,} documents "
                f"written so far. Training continues when it is ready.")


def first_phase(directory: Path, check: Callable[[], None] = nothing_to_check) -> PreparedData:
    """Wait until phase 1 of the preparation in `directory` is ready; its PreparedData then."""
    while True:
        check()
        try:
            meta = read_manifest(directory)
        except DamagedData:
            meta = None  # the preparation beside the run moves it aside and prepares it again
        if meta is not None and meta.get("phases") and meta["phases"][0]["ready"]:
            return PreparedData.from_dir(directory)
        time.sleep(POLL_SECONDS)


class _Cancel:
    """The preparation's stop request: the run set the event, or the run is gone (its child is
    then handed to another parent)."""

    def __init__(self, event: Any) -> None:
        self.event = event
        self.parent = os.getppid()

    def is_set(self) -> bool:
        return self.event.is_set() or os.getppid() != self.parent


def _prepare_in_child(data: DataConfig, threads: int, events: Any, cancel: _Cancel) -> None:
    """The child process: prepare, sending every event and the outcome to the parent."""
    cancel.parent = os.getppid()
    try:
        prepare(data, lambda event: events.put(("event", event)), threads=threads,
                cancel=cancel, progress_seconds=PROGRESS_SECONDS)
        events.put(("finished", None))
    except Cancelled:
        events.put(("cancelled", None))
    except LocaltrainError as exc:
        events.put(("error", exc))
    except BaseException as exc:  # the parent raises it as the preparation's failure
        events.put(("error", LocaltrainError(f"The data preparation failed: {exc!r}. The run stopped; resuming it "
                                             f"continues the preparation from its last commit.")))


class BackgroundPreparation:
    """`prepare()` in a process of its own beside training, so the two never share one interpreter lock.

    Its events reach `emit` through a queue (forwarded by a thread); `check` raises its
    error, and `stop` asks it to stop at its next commit. A child whose parent dies
    (SIGKILL) stops by itself at its next unit of work.
    """

    def __init__(self, data: DataConfig, emit: Emit, threads: int) -> None:
        ctx = pool_context(separate=True)
        self.events = ctx.Queue()
        self.cancel = ctx.Event()
        self.emit = emit
        self.error: BaseException | None = None
        self.finished = False
        self.process = ctx.Process(target=_prepare_in_child, name="localtrain-prepare",
                                   args=(data, threads, self.events, _Cancel(self.cancel)))
        self.forwarder = threading.Thread(target=self._forward, name="localtrain-prepare-events", daemon=True)

    def start(self) -> BackgroundPreparation:
        self.process.start()
        self.forwarder.start()
        return self

    def _forward(self) -> None:
        while True:
            try:
                kind, payload = self.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self.process.is_alive() and self.process.exitcode not in (None, 0):
                    self.error = LocaltrainError(
                        f"The data preparation process exited with status {self.process.exitcode} before it "
                        "finished. The run stopped; resuming it continues the preparation from its last commit.")
                    return
                continue
            if kind == "event":
                self.emit(payload)
                continue
            self.finished = kind == "finished"
            self.error = payload if kind == "error" else None
            if kind == "cancelled" and not self.cancel.is_set():
                self.error = LocaltrainError("The data preparation stopped because the run that started it is "
                                             "gone. Resuming the run continues it from its last commit.")
            return

    @property
    def running(self) -> bool:
        return self.forwarder.is_alive()

    def check(self) -> None:
        """Raise the preparation's error, if it failed."""
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 60.0) -> bool:
        """Ask the preparation to stop at its next commit and wait for it; whether it had finished."""
        self.cancel.set()
        self.forwarder.join(timeout)
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()  # a preparation killed between commits continues from the last one
            self.process.join()
        return self.finished
