"""The planner: the one place where a run's decisions are made.

`plan()` returns a `RunPlan`, a frozen value holding every decision of a run: backend,
device, dtype, compile, micro-batch, accumulation, activation checkpointing, the batch
arithmetic and the schedule's length, with the predicted peak memory and speed. The
trainer, the backends, `doctor`, `sample`, `eval`, the dashboard and plan.json read it;
none of them decides again.

The choices that only a measurement can settle (dtype, compile, micro-batch) come, in
order of precedence, from the user's explicit settings, from the checkpoint a run
resumes, from the tuner's measurements (`localtrain.tuner`), or — before anything is
measured, or with run.autotune=off — from defaults that need no measurement.

The memory model (`localtrain.memory`) says which candidates fit before any is timed;
the values (`RunPlan`, `Choice`, `Measured`, `Tuned`) live in `localtrain.plan`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from localtrain.batch import check_world, micro_batch_candidates, next_smaller_micro, tokens_per_step, total_steps
from localtrain.config import Config
from localtrain.errors import LocaltrainError
from localtrain.files import human, parse_size
from localtrain.hardware import Machine
from localtrain.metrics import flops_per_token, params_count
from localtrain.memory import GB, SAFETY_MARGIN, MemoryEstimate, memory_estimate
from localtrain.plan import Choice, Measured, RunPlan, Tuned
from localtrain.sharding import choose_parallel


def choose_backend(config: Config, machine: Machine) -> tuple[str, str, list[str]]:
    """(backend, device, notes): MLX on Apple silicon when installed, else MPS, CUDA, CPU."""
    backend, device = config.run.backend, config.run.device
    if backend == "auto":
        if machine.apple_silicon and "mlx" in machine.backends and device in ("auto", "mps"):
            return "mlx", "mlx", ["MLX is installed on Apple silicon: the fastest backend here."]
        backend = "torch"
    if backend == "mlx":
        cpu_build = ["MLX on this machine runs on its CPU build: far slower than torch here."]
        return "mlx", "mlx", [] if machine.apple_silicon else cpu_build
    if device == "auto":
        device = "cuda" if machine.has_cuda else "mps" if machine.mps_available else "cpu"
    return backend, device, []


def default_dtype(machine: Machine, device: str) -> str:
    """The dtype when nothing was measured: fp32 on every CPU (it runs at full speed on all of
    them), mixed precision on the GPUs, where it is how models are trained."""
    if device == "cuda":
        return "bfloat16" if machine.gpus and all(g.bf16 for g in machine.gpus) else "float16"
    if device == "mps" or (device == "mlx" and machine.apple_silicon):
        return "float32" if "M1" in machine.chip else "bfloat16"
    return "float32"


def dtype_candidates(machine: Machine, device: str) -> list[str]:
    """The dtypes worth timing: float32 everywhere, bfloat16 where the device can run it, and
    float16 on a GPU without bfloat16. The timing, not this list, decides."""
    if device == "cuda":
        return [default_dtype(machine, device), "float32"]
    if device == "mps":
        return ["float32", "float16"] if "M1" in machine.chip else ["float32", "bfloat16"]
    return ["float32", "bfloat16"]


def compile_candidates(backend: str, device: str) -> list[bool]:
    """torch.compile pays off on some shapes and machines and not on others: time both where it
    is supported. MLX always compiles its step (mx.compile costs little)."""
    if backend == "mlx":
        return [True]
    return [False, True] if device in ("cpu", "cuda") else [False]


def budget(config: Config, machine: Machine, device: str, local_world_size: int = 1) -> tuple[int, str]:
    """Bytes one process of the run may use, and where that number comes from."""
    if config.run.memory_budget != "auto":
        return parse_size(config.run.memory_budget), f"run.memory_budget = {config.run.memory_budget}"
    if device == "cuda" and machine.gpus:
        free = min(g.free_bytes for g in machine.gpus)
        return free, f"free memory of the GPU ({free / GB:.1f} GiB)"
    if device == "mlx" and machine.mlx_max_recommended_working_set_bytes:
        b = machine.mlx_max_recommended_working_set_bytes
        return b, f"MLX's recommended working set ({b / GB:.1f} GiB)"
    if device == "mps" and machine.mps_recommended_max_bytes:
        b = machine.mps_recommended_max_bytes
        return b, f"MPS's recommended maximum ({b / GB:.1f} GiB)"
    headroom = max(GB, machine.ram_total_bytes // 10)
    b = max(0, machine.ram_available_bytes - headroom) // local_world_size
    share = f", shared by {local_world_size} processes" if local_world_size > 1 else ""
    return b, f"available RAM minus {headroom / GB:.1f} GiB headroom{share}"


def estimate_vocab(config: Config) -> int:
    # Before the tokenizer exists: a char vocabulary is the alphabet (a few hundred at most).
    return 256 if config.data.tokenizer == "char" else config.data.vocab_size


def disk_needed(config: Config, params: int, vocab_size: int) -> dict[str, int]:
    """Bytes of disk the data (download and token files) and the checkpoints will take."""
    from localtrain.data.sources import source_bytes

    text, download, _ = source_bytes(config.data)
    bytes_per_token = 1.0 if config.data.tokenizer == "char" else 3.0 if vocab_size < 8192 else 3.6
    token_file = int(text / bytes_per_token) * (2 if vocab_size <= 65536 else 4)
    # Every kept checkpoint holds weights and both moments, one more is being written,
    # and best/ holds weights.
    checkpoints = 12 * params * (config.train.keep_checkpoints + 1) + 4 * params
    return {"data": download + token_file, "checkpoints": checkpoints}


@dataclass(frozen=True)
class Shape:
    """What the memory model needs to know of a run on a device."""

    config: Config
    vocab_size: int
    device: str
    usable: int
    """The budget less the safety margin."""
    parallel: str = "none"
    world_size: int = 1

    def peak(self, choice: Choice, accumulate_unsharded: bool = False) -> MemoryEstimate:
        return memory_estimate(self.config.model, self.vocab_size, choice.micro_batch_size, choice.dtype,
                               self.device, choice.activation_checkpointing, self.device != "mps", choice.compile,
                               self.parallel, self.world_size, accumulate_unsharded)

    def fits(self, choice: Choice) -> bool:
        return self.peak(choice).total <= self.usable

    def whole(self, measured: Measured) -> int:
        """A candidate's measured peak as the whole process's: on CUDA the allocator counts only the
        tensors, so the terms it leaves out (the framework's context, the compiled code) are added
        from the model; elsewhere the measurement is the process's resident peak already."""
        est = self.peak(measured.choice)
        return measured.peak_bytes + est.total - est.measured_as(self.device)


def fitted_micro(shape: Shape, rank_batch: int, dtype: str, compile_: bool) -> tuple[int, bool] | None:
    """The largest micro-batch that fits (without, then with activation checkpointing)."""
    for ckpt in (False, True):
        for m in micro_batch_candidates(rank_batch):
            if shape.fits(Choice(dtype, compile_, m, ckpt)):
                return m, ckpt
    return None


def candidates(config: Config, machine: Machine, vocab_size: int, world_size: int = 1,
               local_world_size: int = 1) -> list[Choice]:
    """The choices the tuner may time: every dtype x compile the backend supports (or the one
    the user set) at the micro-batches that fit — the largest, and the largest at most a half
    and a quarter of it (or the one the user set). Largest first."""
    backend, device, _ = choose_backend(config, machine)
    rank_batch = check_world(config, world_size)
    limit, _ = budget(config, machine, device, local_world_size)
    shape = Shape(config, vocab_size, device, int(limit * (1 - SAFETY_MARGIN)))
    dtypes = [config.train.dtype] if config.train.dtype != "auto" else dtype_candidates(machine, device)
    compiles = [config.run.compile == "on"] if config.run.compile != "auto" else compile_candidates(backend, device)
    out = []
    for dtype in dtypes:
        for comp in compiles:
            if config.train.micro_batch_size:
                m = config.train.micro_batch_size
                ckpt = not shape.fits(Choice(dtype, comp, m)) and shape.fits(Choice(dtype, comp, m, True))
                out.append(Choice(dtype, comp, m, ckpt))
                continue
            top = fitted_micro(shape, rank_batch, dtype, comp)
            if top is None:
                continue
            # The next smaller micro-batch below half of the largest is at most a quarter of it.
            picks = [top[0], next_smaller_micro(rank_batch, top[0]), next_smaller_micro(rank_batch, top[0] // 2)]
            out += [Choice(dtype, comp, m, top[1]) for m in dict.fromkeys(p for p in picks if p)]
    return out


def pick(measured: list[Measured], steps: int, usable: int | None = None,
         whole: Callable[[Measured], int] = lambda m: m.peak_bytes) -> tuple[Measured, str]:
    """The measured candidate with the least predicted wall time for `steps` steps; one within 3%
    of it that needs less memory wins the tie. Memory is a candidate's measured peak as the whole
    process's (`whole`); one whose peak exceeds `usable` bytes is not eligible. Returns it with
    the reason, in words."""
    ok = [m for m in measured if m.status == "ok" and (usable is None or whole(m) <= usable)]
    if not ok:
        raise LocaltrainError("No candidate could be measured: " + "; ".join(
            f"{m.choice.label}: {m.status} ({m.detail})" for m in measured) + ". Set train.dtype, run.compile and"
            " train.micro_batch_size yourself, or run with --set run.autotune=off.")
    fastest = min(ok, key=lambda m: m.wall_s(steps))
    close = [m for m in ok if m.wall_s(steps) <= 1.03 * fastest.wall_s(steps)]
    best = min(close, key=lambda m: (whole(m), m.wall_s(steps)))
    why = (f"{best.choice.label}: {steps} steps at {best.step_s * 1000:.1f} ms"
           + (f" after {best.warmup_s:.1f} s of warm-up" if best.warmup_s >= 0.05 else "")
           + f" = {best.wall_s(steps):.0f} s predicted, the least of {len(ok)} measured")
    if best is not fastest:
        why += (f" within 3% of {fastest.choice.label} ({fastest.wall_s(steps):.0f} s), with less memory"
                f" ({whole(best) / GB:.2f} against {whole(fastest) / GB:.2f} GiB)")
    return best, why


def _decide(config: Config, machine: Machine, shape: Shape, backend: str, rank_batch: int, steps: int,
            tuned: Tuned | None, resumed: Mapping[str, Any] | None) -> tuple[Choice, str, str, list[dict], float]:
    """(choice, decided_by, why, candidates, measured step seconds), by precedence: the user's
    explicit settings, then the resumed checkpoint's choices, the measurements, the defaults."""
    rows: list[dict] = []
    step_s = 0.0
    if resumed:
        base = Choice(resumed["dtype"], bool(resumed["compile"]), int(resumed["micro_batch_size"]),
                      bool(resumed.get("activation_checkpointing", False)))
        if resumed.get("backend", backend) != backend:
            # Moved to another backend: compile as that backend does by default.
            base = dataclasses.replace(base, compile=backend == "mlx" or shape.device == "cuda")
        decided_by, why = "resumed", "the choices the run was started with, from its checkpoint"
    elif tuned is not None:
        best, why = pick(list(tuned.measured), steps, shape.usable, shape.whole)
        base, step_s = best.choice, best.step_s
        decided_by = "measured (cached)" if tuned.cached else "measured"
        rows = [{**m.to_dict(), "predicted_wall_s": m.wall_s(steps) if m.status == "ok" else None,
                 "whole_peak_bytes": shape.whole(m) if m.status == "ok" else None,
                 "chosen": m is best} for m in tuned.measured]
    else:
        dtype = default_dtype(machine, shape.device)
        comp = backend == "mlx" or shape.device == "cuda"
        base = Choice(dtype, comp, rank_batch)
        decided_by = "defaults"
        why = ("run.autotune = off" if config.run.autotune == "off" else "nothing measured yet") + (
            f": {dtype}, {'compiled' if comp else 'eager'}, the largest micro-batch that fits")
    settings = (("dtype", config.train.dtype, config.train.dtype != "auto"),
                ("compile", config.run.compile == "on", config.run.compile != "auto"),
                ("micro_batch_size", config.train.micro_batch_size, config.train.micro_batch_size))
    explicit: dict[str, Any] = {name: value for name, value, given in settings if given}
    if explicit:
        base = dataclasses.replace(base, **explicit)
        why += "; set by you: " + ", ".join(f"{k} = {v}" for k, v in explicit.items())
        if len(explicit) == 3:
            decided_by = "explicit"
    if "micro_batch_size" in explicit:
        # A micro-batch the user set is kept; checkpointing only if it does not fit without.
        plain = dataclasses.replace(base, activation_checkpointing=False)
        ckpt = not shape.fits(plain) and shape.fits(dataclasses.replace(base, activation_checkpointing=True))
        base = dataclasses.replace(base, activation_checkpointing=ckpt)
    elif rank_batch % base.micro_batch_size or not shape.fits(base):
        # A new world size, or a dtype or compile that needs more memory than the one measured.
        fit = fitted_micro(shape, rank_batch, base.dtype, base.compile) or (1, True)
        base = dataclasses.replace(base, micro_batch_size=fit[0], activation_checkpointing=fit[1])
    return base, decided_by, why, rows, step_s


def plan(
    config: Config,
    machine: Machine,
    vocab_size: int | None = None,
    *,
    world_size: int = 1,
    local_world_size: int = 1,
    tuned: Tuned | None = None,
    resumed: Mapping[str, Any] | None = None,
    threads: int = 0,
    parallel: str | None = None,
) -> RunPlan:
    """The run's plan on this machine: every decision, and what it predicts.

    Under data parallelism the plan is per device: each of `world_size` processes trains on
    batch_size / world_size sequences a step, with the model replicated (DDP) or sharded
    (FSDP) over them. `tuned`: the tuner's measurements of this shape; `resumed`: the
    choices recorded in the checkpoint a run continues from; `parallel`: a choice between
    DDP and FSDP already made (run.parallel otherwise).
    """
    backend, device, notes = choose_backend(config, machine)
    vocab = vocab_size or estimate_vocab(config)
    rows = config.model.vocab_rows(vocab)
    params = params_count(config.model, rows)
    rank_batch = check_world(config, world_size)
    limit, source = budget(config, machine, device, local_world_size)
    shape = Shape(config, vocab, device, int(limit * (1 - SAFETY_MARGIN)))
    par, shape, tuned = _sharing(shape, machine, world_size, resumed, parallel, tuned, notes)
    per_step = tokens_per_step(config)
    steps = total_steps(config, vocab)
    tokens = steps * per_step
    choice, decided_by, why, rows_measured, step_s = _decide(
        config, machine, shape, backend, rank_batch, steps, tuned, resumed)
    sample_dtype, sample_why = live_sample_dtype(choice.dtype, tuned, resumed)
    hold = (par == "fsdp" and rank_batch // choice.micro_batch_size > 1
            and shape.peak(choice, accumulate_unsharded=True).total <= shape.usable)
    est = shape.peak(choice, accumulate_unsharded=hold)
    predicted = _predicted_peak(est, rows_measured, choice, shape, notes)
    tok_s = per_step / step_s if step_s else 0.0
    return RunPlan(
        backend=backend, device=device, dtype=choice.dtype, compile=choice.compile, threads=threads,
        batch_size=config.train.batch_size, world_size=world_size, micro_batch_size=choice.micro_batch_size,
        grad_accum_steps=rank_batch // choice.micro_batch_size,
        activation_checkpointing=choice.activation_checkpointing, seq_len=config.model.seq_len,
        tokens_per_step=per_step, total_steps=steps, total_tokens=tokens, params=params, vocab_size=vocab,
        flops_per_token=flops_per_token(config.model, rows), memory=est.terms, predicted_peak_bytes=predicted,
        budget_bytes=limit, budget_source=source, fits=predicted <= limit,
        min_peak_bytes=shape.peak(Choice(choice.dtype, False, 1, True)).total,
        predicted_tokens_per_s=tok_s, predicted_seconds=tokens / tok_s if tok_s else math.inf,
        disk_needed=disk_needed(config, params, vocab), disk_free={k: v["free"] for k, v in machine.disk.items()},
        decided_by=decided_by, why=why + sample_why, candidates=rows_measured, notes=notes,
        parallel=par, accumulate_unsharded=hold, sample_dtype=sample_dtype,
    )


def live_sample_dtype(dtype: str, tuned: Tuned | None, resumed: Mapping[str, Any] | None) -> tuple[str, str]:
    """The dtype live samples decode in ("" for the training `dtype`) and why, in words: a resumed
    run's; else another dtype the tuner timed more than 3% faster a token than `dtype`."""
    if resumed:
        return str(resumed.get("sample_dtype", "")), ""
    timed: dict[str, float] = {}
    for m in tuned.measured if tuned is not None else ():
        if m.decode_s > 0:
            timed.setdefault(m.choice.dtype, m.decode_s)
    fastest = min(timed, key=timed.__getitem__, default=dtype)
    if dtype not in timed or timed[fastest] * 1.03 >= timed[dtype]:
        return "", ""
    return fastest, (f"; live samples decode in {fastest}: {timed[fastest] * 1000:.1f} ms a token against"
                     f" {timed[dtype] * 1000:.1f} ms in {dtype}")


def _sharing(shape: Shape, machine: Machine, world_size: int, resumed: Mapping[str, Any] | None,
             parallel: str | None, tuned: Tuned | None, notes: list[str]) -> tuple[str, Shape, Tuned | None]:
    """How the processes share the model (none, ddp or fsdp), the shape of one process's step under
    it, and the tuner's measurements if they still apply."""
    config, device = shape.config, shape.device
    smallest = Choice(config.train.dtype if config.train.dtype != "auto" else default_dtype(machine, device),
                      False, 1, True)
    sharded = dataclasses.replace(shape, parallel="fsdp", world_size=world_size)
    was = resumed.get("parallel") if resumed and resumed.get("world_size") == world_size else None
    par, par_notes = choose_parallel(parallel or config.run.parallel, world_size, device,
                                     shape.peak(smallest).total, sharded.peak(smallest).total, shape.usable, was)
    notes += par_notes
    if par != "fsdp":
        return par, shape, tuned
    if tuned is not None:
        # The tuner times one unsharded process: neither its speed nor its peak is a sharded step's.
        notes.append("FSDP: the tuner's measurements of one unsharded process are not used.")
    return par, sharded, None


def _predicted_peak(est: MemoryEstimate, rows_measured: list[dict[str, Any]], choice: Choice, shape: Shape,
                    notes: list[str]) -> int:
    """The chosen candidate's measured peak (the whole process's) where the tuner measured it, else
    the model's; with notes."""
    measured = next((r["whole_peak_bytes"] for r in rows_measured if r["chosen"]), 0)
    predicted = int(measured) if measured else est.total
    if choice.activation_checkpointing:
        notes.append("Activation checkpointing is on: the micro-batch does not fit without it.")
    elif shape.config.train.micro_batch_size and predicted > shape.usable:
        notes.append(f"train.micro_batch_size={choice.micro_batch_size} is predicted to need more than the"
                     " budget; if memory runs out the micro-batch backs off.")
    return predicted


def check_plan(plan: RunPlan, machine: Machine) -> None:
    """Refuse, with the numbers, a plan that cannot fit the memory or the disk."""
    if plan.min_peak_bytes > plan.budget_bytes:
        raise LocaltrainError(
            f"This model does not fit: one step needs about {plan.min_peak_bytes / GB:.2f} GiB"
            " even at micro-batch 1 with activation checkpointing, and the"
            f" budget is {plan.budget_bytes / GB:.2f} GiB ({plan.budget_source}). Lower model.n_embd,"
            " model.n_layer, model.seq_len or data.vocab_size, or raise run.memory_budget if more"
            " memory is really free."
        )
    needed = plan.disk_needed["data"] + plan.disk_needed["checkpoints"]
    same_fs = machine.disk["runs"].get("device") == machine.disk["cache"].get("device")
    checks = (
        [("the run and cache directories", needed, min(plan.disk_free.values()))]
        if same_fs
        else [("the cache directory", plan.disk_needed["data"], plan.disk_free["cache"]),
              ("the run directory", plan.disk_needed["checkpoints"], plan.disk_free["runs"])]
    )
    for where, need, free in checks:
        if need > free:
            raise LocaltrainError(
                f"Not enough disk: the data (download and token files, about"
                f" {human(plan.disk_needed['data'])}) and checkpoints (about"
                f" {human(plan.disk_needed['checkpoints'])}) still to write need {human(need)} on {where},"
                f" which has {human(free)} free. Nothing was downloaded or written. Free some"
                " space, point $LOCALTRAIN_CACHE or --run-dir elsewhere, or lower"
                " train.keep_checkpoints."
            )
