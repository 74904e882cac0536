"""One `localtrain run`: resolve the config and run directory, prepare data, train.

This is the glue between the CLI and the parts: it owns the run directory (its lock,
config.toml, plan.json, events.jsonl), fans events out to their readers, and turns
SIGINT/SIGTERM into a clean stop with a checkpoint.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from localtrain import checkpoint, config as cfg, events as ev, hardware, metrics, planner, rundir, tuner
from localtrain.backends import backend_class, make_backend
from localtrain.data.paths import cache_root
from localtrain.errors import CheckpointError, DataError, LocaltrainError
from localtrain.files import checked, disk_error, write_atomic
from localtrain.parallel import Dist, Single
from localtrain.rundir import RUNS_ROOT, new_run_dir, no_such_run, remove_unstarted, run_name
from localtrain.runfiles import CONFIG_FILE, EVENTS_FILE, LOCK_FILE, PLAN_FILE
T = TypeVar("T")


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


@dataclass
class Setup:
    config: cfg.Config
    run_dir: Path
    resume: bool | str
    changes: list[tuple[str, object, object]]
    machine: hardware.Machine | None = None
    plan: planner.RunPlan | None = None
    """The plan made before the data exists (the vocabulary estimated): memory and disk checked."""
    resume_step: int | None = None
    """The step of `--resume RUN/checkpoints/step-N`; None resumes from the newest checkpoint."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """What the user should know before it starts (which preset was picked for the data, and why)."""


def preflight(s: Setup, world_size: int = 1, local_world_size: int = 1) -> Setup:
    """Probe the machine and plan: a run that cannot fit the memory or the disk fails now,
    before anything is downloaded or written."""
    machine = hardware.probe(s.run_dir.parent, cache_root(s.config.data))
    planned = planner.plan(s.config, machine, world_size=world_size, local_world_size=local_world_size)
    planner.check_plan(rundir.with_disk_still_needed(planned, s.run_dir, s.config), machine)
    return dataclasses.replace(s, machine=machine, plan=planned)


def find_latest_run(root: Path, preset: str | None) -> Path | None:
    """The most recently updated resumable run under `root` (of `preset`, if given)."""
    candidates = []
    if root.is_dir():
        for d in root.iterdir():
            conf = d / CONFIG_FILE
            if not conf.is_file() or not checkpoint.complete_checkpoints(d):
                continue
            if preset is not None:
                try:
                    if cfg.read_toml(conf).get("run", {}).get("preset") != preset:
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
    return find_latest_run(RUNS_ROOT, request.preset)


def setup(request: RunRequest) -> Setup:
    """Resolve the configuration and run directory, checking what is already on disk."""
    if request.resume:
        run_dir = _locate_resume(request)
        if run_dir is None and request.resume != "auto":
            where = request.run_dir or f"{RUNS_ROOT}/"
            raise CheckpointError(
                f"--resume: there is no run to resume in {where}. Start one with `localtrain run`,"
                " or pass --resume auto to start fresh when there is none."
            )
        if run_dir is not None:
            rundir.check(run_dir, "--resume")
            s = _setup_resume(request, run_dir)
            return dataclasses.replace(s, resume_step=rundir.resume_step(request.resume))
    preset, why = choose_preset(request.preset, request.overrides)
    config = cfg.resolve(preset, request.overrides)
    check_source(config)
    run_dir = Path(request.run_dir or config.run.run_dir or new_run_dir(run_name(config)))
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
    s = Setup(config, run_dir, False, [], notes=[why] if why else [])
    return preflight(s, request.world_size, request.local_world_size)


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


def _setup_resume(request: RunRequest, run_dir: Path) -> Setup:
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
        listed = describe_changes(frozen)
        raise LocaltrainError(
            f"Cannot resume {run_dir} with a different model or data ({listed}): its checkpoints"
            " were trained with the original. Drop those overrides to resume, or start a new run."
        )
    return preflight(Setup(config, run_dir, request.resume, changes), request.world_size,
                     request.local_world_size)


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
        try:
            f.truncate(0)
        except OSError:
            pass  # (a full or failing disk: the holder's pid stays, the lock itself is released)
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


def execute(s: Setup, console: ev.Emit | None = None, dist: Dist | None = None) -> ev.Done:
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
        return _train(s, lambda event: None, dist)
    created = [d for d in (s.run_dir, *s.run_dir.parents) if not d.exists()]
    rundir.claim(s.run_dir)
    try:
        with run_lock(s.run_dir):
            write_atomic(s.run_dir / CONFIG_FILE, cfg.to_toml(s.config))
            writer = ev.EventWriter(s.run_dir / EVENTS_FILE)
            emit = Fanout(writer, *([console] if console else []))
            try:
                return _train(s, emit, dist)
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
            remove_unstarted(s.run_dir, created)
        raise


def _record_error(writer: ev.EventWriter, exc: LocaltrainError) -> None:
    """The error as the run's last event, for its readers (the CLI prints it once); a full disk may refuse it."""
    try:
        writer(ev.Error(message=str(exc)))
    except LocaltrainError:
        pass


def _agreed(planned: planner.RunPlan, dist: Dist) -> planner.RunPlan:
    """Rank 0's choices on every rank: ranks that split or shard a step differently would
    wait on each other's collectives forever (each probed its own free memory)."""
    if dist.world_size == 1:
        return planned
    keys = ("parallel", "dtype", "compile", "micro_batch_size", "grad_accum_steps", "activation_checkpointing",
            "accumulate_unsharded")
    chosen = json.loads(dist.broadcast_text(json.dumps({k: getattr(planned, k) for k in keys})))
    return dataclasses.replace(planned, **chosen)


def _in_turn(dist: Dist, work: Callable[[], T]) -> T:
    """Run `work` on each node's first process, then on the others (which find it cached)."""
    result = work() if dist.local_rank == 0 else None
    dist.barrier()
    return result if dist.local_rank == 0 else work()


def _open_data(config: cfg.Config, emit: ev.Emit, dist: Dist, stack: ExitStack):
    """The prepared data to train on: (PreparedData, train tokens or phases, val tokens).

    Without data.phases the whole corpus is prepared first. With them, each node's first
    process starts the preparation in a process beside it, and training opens the data once phase 1 is
    ready: the figures of the PreparedData returned are phase 1's, and its validation
    tokens stay the same for the whole run, so every evaluation is comparable.
    """
    from localtrain.data.phases import BackgroundPreparation, GrowingPhases, first_phase, nothing_to_check
    from localtrain.data.prepare import prepare, prepared_dir

    if not config.data.phases:
        prepared = _in_turn(dist, lambda: prepare(config.data, emit, threads=config.run.threads))
        return prepared, prepared.load("train"), prepared.load("val")
    check = nothing_to_check
    if dist.local_rank == 0:
        # Training gets the cores first: the preparation beside it takes half of them for its workers.
        workers = max(1, (config.run.threads or os.cpu_count() or 1) // 2)
        background = BackgroundPreparation(config.data, emit, workers).start()
        stack.callback(_stop_preparation, background, emit)
        check = background.check
    directory = prepared_dir(config.data)
    prepared = first_phase(directory, check)
    first = prepared.phases[0]
    prepared = dataclasses.replace(prepared, train_tokens=first["train_tokens"], val_tokens=first["val_tokens"])
    return prepared, GrowingPhases(directory, check), prepared.load("val", limit=first["val_tokens"])


def _stop_preparation(background, emit: ev.Emit) -> None:
    if background.running:
        background.stop()
        if not background.finished and background.error is None:
            emit(ev.Warning(message="Training ended before the data preparation did; it stopped after its last "
                            "commit. The next run on this data (or `localtrain prepare`) continues it.",
                            code="preparation_stopped"))


def _train(s: Setup, emit: ev.Emit, dist: Dist) -> ev.Done:
    with ExitStack() as stack:
        return _train_on(s, emit, dist, stack)


def _train_on(s: Setup, emit: ev.Emit, dist: Dist, stack: ExitStack) -> ev.Done:
    from localtrain.control import ControlFile
    from localtrain.data.loader import check_train_size
    from localtrain.train import StopFlag, TrainData, Trainer

    config, run_dir = s.config, s.run_dir
    for key, old, new in s.changes:
        emit(ev.Warning(message=f"Resuming with {key} changed from {old!r} to {new!r}.", code="config_changed"))
    if dist.is_main:
        checkpoint.remove_stale_temps(run_dir)
    loaded = _load_resume(s, emit)
    if s.plan is None or s.machine is None:
        s = preflight(s, dist.world_size, dist.local_world_size)
    # The device is checked before the data is prepared: an unavailable one fails fast.
    backend_class(s.plan.backend).check_device(config.run.device)
    if dist.world_size > 1 and s.plan.backend != "torch":
        backend_class(s.plan.backend)(s.plan.device, s.plan.dtype).set_distributed(dist)  # explains, raises
    prepared, train_tokens, val_tokens = _open_data(config, emit, dist, stack)
    tokenizer = prepared.tokenizer()
    if loaded is not None and loaded.state.get("tokenizer_sha256") != tokenizer.sha256:
        raise CheckpointError(
            f"The tokenizer prepared now ({prepared.tokenizer_path}) differs from the one"
            f" {loaded.path} was trained with, so its token ids would mean other text (did"
            " the source files change?). Start a new run on the current data."
        )
    if dist.is_main:
        write_atomic(run_dir / "tokenizer.model", prepared.tokenizer_path.read_bytes())
    planned = final_plan(s, prepared.vocab_size, loaded, dist, emit)
    check_train_size(prepared.train_tokens, config.model.seq_len, planned.micro_batch_size)
    backend = make_backend(planned)
    if dist.world_size > 1 or planned.parallel == "fsdp":
        backend.set_distributed(dist)
    if planned.parallel == "fsdp":
        backend.set_accumulation(unsharded=planned.accumulate_unsharded)
    backend.build(config.model, prepared.vocab_size, config.train.seed)
    backend.configure_optimizer(config.train)
    if planned.activation_checkpointing:
        backend.set_activation_checkpointing(True)
    if config.run.memory_budget != "auto":
        backend.set_memory_limit(planned.budget_bytes)
    data = TrainData(
        train_tokens=train_tokens, val_tokens=val_tokens,
        token_bytes=tokenizer.token_bytes(), encode=tokenizer.encode, decode=tokenizer.decode,
        eos_id=tokenizer.eos_id, tokenizer_sha256=tokenizer.sha256, vocab_size=prepared.vocab_size,
    )
    cache = cache_root(config.data)
    peak, _ = _in_turn(dist, lambda: metrics.cached_peak_flops(cache, backend.peak_key(), backend.measure_peak_flops))
    stop = StopFlag()
    trainer = Trainer(config, backend, data, run_dir, emit, planned, peak, stop,
                      ControlFile(run_dir, _warner(emit)) if dist.is_main else None, dist=dist)
    if loaded is not None:
        trainer.restore(loaded)
    plan = plan_event(planned, backend, trainer, prepared, loaded)
    if dist.is_main:
        write_atomic(run_dir / PLAN_FILE, json.dumps({**planned.to_dict(), **json.loads(plan.to_json())},
                                                       indent=1, default=str) + "\n")
    emit(plan)
    with stop_on_signals(stop):
        return trainer.run()


def _load_resume(s: Setup, emit: ev.Emit) -> checkpoint.Loaded | None:
    """The checkpoint a resumed run continues from (None for a new run, or --resume auto with none)."""
    if not s.resume:
        return None
    loaded = rundir.resume_point(s.run_dir, s.resume_step, emit)
    if loaded is None and s.resume != "auto":
        raise CheckpointError(
            f"--resume: {s.run_dir} has no complete checkpoint that verifies (see the"
            " warnings above for any that were skipped). Start again without --resume,"
            " or with --resume auto."
        )
    if loaded is not None and loaded.state.get("model_fingerprint") != s.config.model_fingerprint():
        raise CheckpointError(
            f"{loaded.path} was written for a different model or data configuration than"
            f" {s.run_dir / CONFIG_FILE} describes. Restore that file or start a new run."
        )
    for message in rundir.drift_warnings(loaded, s.config, s.changes) if loaded is not None else []:
        emit(ev.Warning(message=message, code="config_changed"))
    return loaded


def final_plan(s: Setup, vocab_size: int, loaded: checkpoint.Loaded | None, dist: Dist,
               emit: ev.Emit) -> planner.RunPlan:
    """The plan with the tokenizer's real vocabulary: measured by the tuner on a new run (once per
    machine and shape), the checkpoint's own choices on a resumed one."""
    config, machine = s.config, s.machine
    assert machine is not None
    sizes = {"world_size": dist.world_size, "local_world_size": dist.local_world_size}
    resumed = loaded.state.get("plan") if loaded is not None else None
    tuned = None
    # The tuner times one unsharded process, which says nothing of a sharded step.
    if tuner.wanted(config, loaded is not None) and s.plan is not None and s.plan.parallel != "fsdp":
        cache = cache_root(config.data)
        tuned = _in_turn(dist, lambda: tuner.tune(config, machine, vocab_size, cache, emit, **sizes))
    planned = planner.plan(config, machine, vocab_size, tuned=tuned, resumed=resumed,
                           threads=config.run.threads, **sizes)
    planned = _agreed(planned, dist)
    planner.check_plan(rundir.with_disk_still_needed(planned, s.run_dir, config), machine)
    return planned


def _warner(emit: ev.Emit) -> Callable[[str], None]:
    return lambda message: emit(ev.Warning(message=message, code="control_line"))


def plan_event(planned: planner.RunPlan, backend, trainer, prepared, loaded) -> ev.Plan:
    """The `plan` event: what the planner chose and what this process actually runs with."""
    return ev.Plan(
        backend=backend.name, device=backend.device, dtype=backend.dtype,
        params=backend.num_params(), vocab_size=prepared.vocab_size, seq_len=trainer.config.model.seq_len,
        batch_size=planned.batch_size, micro_batch_size=trainer.micro_batch_size,
        grad_accum_steps=trainer.grad_accum_steps, tokens_per_step=planned.tokens_per_step,
        total_steps=trainer.total_steps, flops_per_token=trainer.flops_per_token, peak_flops=trainer.peak_flops,
        threads=backend.threads, compiled=backend.compile, decided_by=planned.decided_by, why=planned.why,
        train_tokens=prepared.train_tokens, val_tokens=prepared.val_tokens,
        resumed_from=trainer.state.step if loaded is not None else None,
        activation_checkpointing=planned.activation_checkpointing,
        predicted_peak_bytes=planned.predicted_peak_bytes, budget_bytes=planned.budget_bytes,
        predicted_tokens_per_s=planned.predicted_tokens_per_s, notes=planned.notes,
        world_size=planned.world_size, parallel=planned.parallel,
    )


@contextmanager
def stop_on_signals(stop) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second one aborts."""

    def handler(signum: int, frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request("interrupted")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
