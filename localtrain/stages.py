"""The stages of one run, in order: resume state, data, plan, backend, trainer.

`train()` runs them; each takes the `RunContext` the ones before it filled and adds its
part, so each reads at a glance: what the run resumes from (and the device check that
fails fast), the prepared data and its tokenizer, the final plan on the real vocabulary,
the backend built to it, and the trainer with its plan event and plan.json. `Setup` is
what the runner resolved from the command line; `preflight` plans before any data exists.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from localtrain import checkpoint, config as cfg, events as ev, hardware, metrics, ownership, planner, rundir, tuner
from localtrain.backends import backend_class, make_backend
from localtrain.backends.base import Backend
from localtrain.data.paths import cache_root
from localtrain.errors import CheckpointError, LocaltrainError, PeerFailed
from localtrain.files import write_atomic
from localtrain.parallel import Dist
from localtrain.plan import RunPlan
from localtrain.runfiles import CONFIG_FILE, PLAN_FILE

T = TypeVar("T")


@dataclass
class Setup:
    config: cfg.Config
    run_dir: Path
    resume: bool | str
    changes: list[tuple[str, object, object]]
    machine: hardware.Machine | None = None
    plan: RunPlan | None = None
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


@dataclass
class OpenedData:
    """The prepared data a run trains on, as the data stage found it."""

    prepared: Any
    """The PreparedData (with phase 1's figures when the data grows in phases)."""
    train: Any
    """The train tokens, or the phases that grow under training."""
    val: Any
    tokenizer: Any


@dataclass
class RunContext:
    """What the stages have found and built so far."""

    setup: Setup
    emit: ev.Emit
    dist: Dist
    stack: ExitStack
    loaded: checkpoint.Loaded | None = None
    data: OpenedData | None = None
    plan: RunPlan | None = None
    backend: Backend | None = None
    trainer: Any = None
    stop: Any = None


def train(s: Setup, emit: ev.Emit, dist: Dist) -> ev.Done:
    """Run every stage, then the trainer until it stops (SIGINT/SIGTERM ask it to)."""
    with ExitStack() as stack:
        ctx = RunContext(s, emit, dist, stack)
        for stage in (resume_state, open_data, decide_plan, build_backend, build_trainer):
            stage(ctx)
        with stop_on_signals(ctx.stop):
            return ctx.trainer.run()


def resume_state(ctx: RunContext) -> None:
    """The checkpoint a resumed run continues from, the plan before data, and the device check."""
    s, emit, dist = ctx.setup, ctx.emit, ctx.dist
    for key, old, new in s.changes:
        emit(ev.Warning(message=f"Resuming with {key} changed from {old!r} to {new!r}.", code="config_changed"))
    if dist.is_main:
        checkpoint.remove_stale_temps(s.run_dir)
        ownership.remove_dead_temporaries(s.run_dir, "run", rundir.ATOMIC_FILES)
    ctx.loaded = _load_resume(s, emit)
    if s.plan is None or s.machine is None:
        ctx.setup = s = preflight(s, dist.world_size, dist.local_world_size)
    # The device is checked before the data is prepared: an unavailable one fails fast.
    backend_class(s.plan.backend).check_device(s.config.run.device)
    if dist.world_size > 1 and s.plan.backend != "torch":
        backend_class(s.plan.backend)(s.plan.device, s.plan.dtype).set_distributed(dist)  # explains, raises


def open_data(ctx: RunContext) -> None:
    """The prepared data and its tokenizer, which must be the one a resumed checkpoint was trained with."""
    s, loaded = ctx.setup, ctx.loaded
    prepared, train_tokens, val_tokens = _open_data(s.config, ctx.emit, ctx.dist, ctx.stack)
    tokenizer = prepared.tokenizer()
    if loaded is not None and loaded.state.get("tokenizer_sha256") != tokenizer.sha256:
        raise CheckpointError(
            f"The tokenizer prepared now ({prepared.tokenizer_path}) differs from the one"
            f" {loaded.path} was trained with, so its token ids would mean other text (did"
            " the source files change?). Start a new run on the current data."
        )
    if ctx.dist.is_main:
        write_atomic(s.run_dir / "tokenizer.model", prepared.tokenizer_path.read_bytes())
    ctx.data = OpenedData(prepared, train_tokens, val_tokens, tokenizer)


def decide_plan(ctx: RunContext) -> None:
    """The final plan on the tokenizer's real vocabulary: measured by the tuner on a new run (once per
    machine and shape), the checkpoint's own choices on a resumed one. The train split must fill a micro-batch."""
    from localtrain.data.loader import check_train_size

    s, loaded, dist = ctx.setup, ctx.loaded, ctx.dist
    config, machine = s.config, s.machine
    assert machine is not None and ctx.data is not None
    prepared = ctx.data.prepared
    sizes = {"world_size": dist.world_size, "local_world_size": dist.local_world_size}
    resumed = loaded.state.get("plan") if loaded is not None else None
    tuned = None
    # The tuner times one unsharded process, which says nothing of a sharded step.
    if tuner.wanted(config, loaded is not None) and s.plan is not None and s.plan.parallel != "fsdp":
        cache = cache_root(config.data)
        tuned = _in_turn(dist, lambda: tuner.tune(config, machine, prepared.vocab_size, cache, ctx.emit, **sizes))
    planned = planner.plan(config, machine, prepared.vocab_size, tuned=tuned, resumed=resumed,
                           threads=config.run.threads, **sizes)
    ctx.plan = planned = _agreed(planned, dist)
    planner.check_plan(rundir.with_disk_still_needed(planned, s.run_dir, config), machine)
    check_train_size(prepared.train_tokens, config.model.seq_len, planned.micro_batch_size)


def build_backend(ctx: RunContext) -> None:
    """The backend the plan chose, built, its optimizer set, in the process group if there is one."""
    planned, config = ctx.plan, ctx.setup.config
    assert planned is not None and ctx.data is not None
    backend = make_backend(planned)
    if ctx.dist.world_size > 1 or planned.parallel == "fsdp":
        backend.set_distributed(ctx.dist)
    if planned.parallel == "fsdp":
        backend.set_accumulation(unsharded=planned.accumulate_unsharded)
    backend.build(config.model, ctx.data.prepared.vocab_size, config.train.seed)
    backend.configure_optimizer(config.train)
    backend.set_measurement_cache(cache_root(config.data))
    if planned.activation_checkpointing:
        backend.set_activation_checkpointing(True)
    if config.run.memory_budget != "auto":
        backend.set_memory_limit(planned.budget_bytes)
    ctx.backend = backend


def build_trainer(ctx: RunContext) -> None:
    """The trainer, restored from the checkpoint on a resume; the plan event and plan.json."""
    from localtrain.control import ControlFile
    from localtrain.train import StopFlag, TrainData, Trainer

    s, dist, backend, opened, planned = ctx.setup, ctx.dist, ctx.backend, ctx.data, ctx.plan
    assert backend is not None and opened is not None and planned is not None
    tok = opened.tokenizer
    data = TrainData(
        train_tokens=opened.train, val_tokens=opened.val,
        token_bytes=tok.token_bytes(), encode=tok.encode, decode=tok.decode,
        eos_id=tok.eos_id, tokenizer_sha256=tok.sha256, vocab_size=opened.prepared.vocab_size,
    )
    cache = cache_root(s.config.data)
    peak, _ = _in_turn(dist, lambda: metrics.cached_peak_flops(cache, backend.peak_key(), backend.measure_peak_flops))
    ctx.stop = StopFlag()
    control = None
    if dist.is_main:
        control = ControlFile(s.run_dir, lambda message: ctx.emit(ev.Warning(message=message, code="control_line")))
    ctx.trainer = trainer = Trainer(s.config, backend, data, s.run_dir, ctx.emit, planned, peak, ctx.stop, control,
                                    dist=dist)
    if ctx.loaded is not None:
        trainer.restore(ctx.loaded)
    plan = plan_event(planned, backend, trainer, opened.prepared, ctx.loaded)
    if dist.is_main:
        write_atomic(s.run_dir / PLAN_FILE, json.dumps({**planned.to_dict(), **json.loads(plan.to_json())},
                                                         indent=1, default=str) + "\n")
    ctx.emit(plan)


def _agreed(planned: RunPlan, dist: Dist) -> RunPlan:
    """Rank 0's choices on every rank: ranks that split or shard a step differently would
    wait on each other's collectives forever (each probed its own free memory)."""
    if dist.world_size == 1:
        return planned
    keys = ("parallel", "dtype", "compile", "micro_batch_size", "grad_accum_steps", "activation_checkpointing",
            "accumulate_unsharded")
    chosen = json.loads(dist.broadcast_text(json.dumps({k: getattr(planned, k) for k in keys})))
    return dataclasses.replace(planned, **chosen)


def _in_turn(dist: Dist, work: Callable[[], T]) -> T:
    """Run `work` on each node's first process, then on the others (which find it cached).

    Where it fails on an error it reports (no text in the data, say), the others learn so
    here and stop too, each with that error's exit code and nothing to add to its paragraph.
    """
    result, failed = None, None
    if dist.local_rank == 0:
        try:
            result = work()
        except LocaltrainError as exc:
            failed = exc
    code = int(dist.all_max([failed.exit_code if failed else 0])[0])
    if failed:
        raise failed
    if code:
        raise PeerFailed("another process of this job stopped on the error it reported")
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


def plan_event(planned: RunPlan, backend, trainer, prepared, loaded) -> ev.Plan:
    """The `plan` event: what the planner chose and what this process actually runs with."""
    return ev.Plan(
        backend=backend.name, device=backend.device, dtype=backend.dtype,
        params=backend.num_params(), vocab_size=prepared.vocab_size, seq_len=trainer.config.model.seq_len,
        batch_size=planned.batch_size, micro_batch_size=trainer.micro_batch_size,
        grad_accum_steps=trainer.grad_accum_steps, tokens_per_step=planned.tokens_per_step,
        total_steps=planned.total_steps, flops_per_token=planned.flops_per_token, peak_flops=trainer.peak_flops,
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
