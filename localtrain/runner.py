"""One `localtrain run`: resolve the config and the run directory, then run the stages.

This is the glue between the CLI and the parts: it turns a `RunRequest` into a `Setup`
(the preset, the run directory, what a resume continues), owns the run directory (its
lock, config.toml, events.jsonl) and fans events out to their readers; `stages.train`
does the rest (data, plan, backend, trainer).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from localtrain import checkpoint, config as cfg, events as ev, rundir, stages
from localtrain.errors import CheckpointError, DataError, LocaltrainError
from localtrain.files import checked, disk_error, write_atomic
from localtrain.parallel import Dist, Single
from localtrain.runfiles import CONFIG_FILE, EVENTS_FILE, LOCK_FILE, no_such_run


@dataclass
class RunRequest:
    """What the user asked for on the command line."""

    preset: str | None = None
    overrides: list[str] = dataclasses.field(default_factory=list)
    run_dir: str | None = None
    resume: bool | str = False
    """False: a new run; True: continue an existing one; "auto": continue if possible; or a path."""
    world_size: int = 1
    """Processes of a data-parallel job (the plan is per device)."""
    local_world_size: int = 1


def find_latest_run(root: Path, preset: str | None) -> Path | None:
    """The most recently updated resumable run under `root` (of `preset`, if given)."""
    candidates = []
    if root.is_dir():
        for d in root.iterdir():
            conf = d / CONFIG_FILE
            if not conf.is_file() or not checkpoint.complete_checkpoints(d):
                continue
            try:
                if preset is not None and cfg.read_toml(conf).get("run", {}).get("preset") != preset:
                    continue
            except LocaltrainError:
                continue
            stamp = max((d / n).stat().st_mtime for n in (CONFIG_FILE, EVENTS_FILE) if (d / n).exists())
            candidates.append((stamp, d))
    return max(candidates)[1] if candidates else None


def _locate_resume(request: RunRequest) -> Path | None:
    if isinstance(request.resume, str) and request.resume != "auto":
        path = Path(request.resume).expanduser()
        if path.name.startswith(checkpoint.PREFIX) and path.parent.name == "checkpoints":
            path = path.parent.parent
        if not path.exists():
            raise CheckpointError(f"--resume {request.resume}: {no_such_run(path)}")
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"--resume {request.resume}: {path} is not a run directory (it has no {CONFIG_FILE})."
                " Give a run directory such as runs/python-stdlib-20260101-120000 or one of its"
                " checkpoints/step-N directories."
            )
        return path
    if request.run_dir:
        path = Path(request.run_dir).expanduser()
        return path if (path / CONFIG_FILE).is_file() else None
    return find_latest_run(rundir.RUNS_ROOT, request.preset)


def setup(request: RunRequest) -> stages.Setup:
    """Resolve the configuration and run directory, checking what is already on disk."""
    if request.resume:
        run_dir = _locate_resume(request)
        if run_dir is None and request.resume != "auto":
            where = request.run_dir or f"{rundir.RUNS_ROOT}/"
            raise CheckpointError(
                f"--resume: there is no run to resume in {where}. Start one with `localtrain run`,"
                " or pass --resume auto to start fresh when there is none."
            )
        if run_dir is not None:
            rundir.check(run_dir, "--resume")
            return _setup_resume(request, run_dir)
    preset, why = choose_preset(request.preset, request.overrides)
    config = cfg.resolve(preset, request.overrides)
    check_source(config)
    run_dir = Path(request.run_dir or config.run.run_dir or rundir.new_run_dir(rundir.run_name(config)))
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_dir=str(run_dir)))
    rundir.check(run_dir)
    conf = run_dir / CONFIG_FILE
    if conf.is_file():
        old = cfg.resolve(base=cfg.read_toml(conf))
        if old.fingerprint() != config.fingerprint():
            changed = describe_changes([c for c in cfg.diff(old, config) if not c[0].startswith("run.")])
            raise LocaltrainError(
                f"The run directory {run_dir} holds a run with a different configuration ({changed})."
                " Nothing was changed. Pass --resume to continue that run as it was configured,"
                " or choose a new directory with --run-dir."
            )
        if checkpoint.complete_checkpoints(run_dir):
            raise LocaltrainError(
                f"The run directory {run_dir} already has checkpoints. Nothing was changed. Pass"
                " --resume to continue it, or choose a new directory with --run-dir."
            )
    s = stages.Setup(config, run_dir, False, [], notes=[why] if why else [])
    return stages.preflight(s, request.world_size, request.local_world_size)


def choose_preset(preset: str | None, overrides: list[str]) -> tuple[str, str | None]:
    """The preset a new run starts from, and why when it was picked rather than named.

    A named preset wins. Without one, `data.source` (what --data sets) picks it from the
    data (`sources.preset_for`); with neither, the default python-stdlib.
    """
    if preset:
        return preset, None
    sources = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].strip() == "data.source" and "=" in o]
    if not sources or not sources[-1].strip():
        return "python-stdlib", None
    from localtrain.data.sources import preset_for

    return preset_for(sources[-1].strip())


def describe_changes(changes: list[tuple[str, object, object]], limit: int = 8) -> str:
    shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:limit])
    return shown + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def _setup_resume(request: RunRequest, run_dir: Path) -> stages.Setup:
    old = cfg.resolve(base=cfg.read_toml(run_dir / CONFIG_FILE))
    if request.preset and request.preset != old.run.preset:
        raise LocaltrainError(
            f"--preset {request.preset}: the run in {run_dir} was started from preset"
            f" {old.run.preset!r}. Drop --preset to resume it, or start a new run without --resume."
        )
    config = cfg.resolve(base=old.to_dict(), overrides=request.overrides)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_dir=str(run_dir)))
    changes = [c for c in cfg.diff(old, config) if c[0] not in ("run.overrides", "run.run_dir")]
    frozen = [c for c in changes if c[0].startswith(("model.", "data."))]
    if frozen:
        raise LocaltrainError(
            f"Cannot resume {run_dir} with a different model or data ({describe_changes(frozen)}): its checkpoints"
            " were trained with the original. Drop those overrides to resume, or start a new run."
        )
    s = stages.Setup(config, run_dir, request.resume, changes, resume_step=rundir.resume_step(request.resume))
    return stages.preflight(s, request.world_size, request.local_world_size)


def check_source(config: cfg.Config) -> None:
    """Fail on a missing or unavailable data source before anything is written."""
    from localtrain.data.sources import resolve_source

    resolve_source(config.data)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One process per run directory: a second `localtrain run` on it fails at once."""
    path = run_dir / LOCK_FILE
    f = checked("open", path, open, path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise LocaltrainError(
            f"The run directory {run_dir} is in use by {holder}. Wait for it to finish, stop it,"
            " or choose another --run-dir."
        ) from None
    try:
        checked("write", path, _write_holder, f, f"localtrain process {os.getpid()}")
    except BaseException:
        f.close()
        raise
    try:
        yield
    finally:
        with suppress(OSError):  # (a full or failing disk: the holder's pid stays, the lock itself is released)
            f.truncate(0)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _write_holder(f, text: str) -> None:
    f.truncate(0)
    f.write(text)
    f.flush()


class Fanout:
    """Sends each event to every sink, one event at a time (a background preparation emits too)."""

    def __init__(self, *sinks: ev.Emit) -> None:
        self.sinks = list(sinks)
        self._lock = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        with self._lock:
            for sink in self.sinks:
                sink(event)


def execute(s: stages.Setup, console: ev.Emit | None = None, dist: Dist | None = None) -> ev.Done:
    """Prepare data, build the backend, restore a checkpoint if resuming, and train.

    In a data-parallel job every rank runs this; rank 0 alone owns the run directory
    (lock, config, events, checkpoints) and the console.
    """
    dist = dist or Single()
    if s.config.run.parallel == "fsdp" and isinstance(dist, Single):
        raise LocaltrainError(
            "run.parallel = fsdp shards the model over the processes of a torchrun job, and this run"
            " has none: add --nproc N (N processes of this machine; --nproc 1 works too), or pass"
            " --set run.parallel=auto to train in one process. Nothing was written."
        )
    if not dist.is_main:
        return stages.train(s, lambda event: None, dist)
    created = [d for d in (s.run_dir, *s.run_dir.parents) if not d.exists()]
    rundir.claim(s.run_dir)
    try:
        with run_lock(s.run_dir):
            write_atomic(s.run_dir / CONFIG_FILE, cfg.to_toml(s.config))
            writer = ev.EventWriter(s.run_dir / EVENTS_FILE)
            emit = Fanout(writer, *([console] if console else []))
            try:
                return stages.train(s, emit, dist)
            except LocaltrainError as exc:
                _record_error(writer, exc)
                raise
            except OSError as exc:  # one that did not pass through localtrain.files
                error = disk_error(exc, exc.filename, "open")
                _record_error(writer, error)
                raise error from exc
            finally:
                writer.close()
    except DataError:
        # The input was wrong (no text, a split too small): fixing it and running the same command
        # again is all there is to do. Any other failure keeps the directory and its recorded error.
        if created:
            rundir.remove_unstarted(s.run_dir, created)
        raise


def _record_error(writer: ev.EventWriter, exc: LocaltrainError) -> None:
    """The error as the run's last event, for its readers (the CLI prints it once); a full disk may refuse it."""
    with suppress(LocaltrainError):
        writer(ev.Error(message=str(exc)))
