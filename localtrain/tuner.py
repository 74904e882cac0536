"""The tuner: time the planner's candidates on this machine, once per machine and shape.

Which dtype, compile and micro-batch train fastest is a fact about this machine and this
shape, not something to read off CPU flags or to equate with "the largest that fits". The
tuner times the candidates the memory model lets through (`planner.candidates`), a few
real optimizer steps each, in a subprocess (`localtrain.backends.probe`), and the planner
picks the least predicted wall time of the whole run (`planner.pick`). The search is
bounded: every dtype eager at the largest micro-batch; the smaller micro-batches in the
fastest dtype; then compiled, in that dtype (and in a runner-up within 10%) at the
fastest micro-batch. The measurements are cached per machine, framework version, shape
and candidate list, so a second run on the same machine measures nothing.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from localtrain import events as ev
from localtrain.backends import preload
from localtrain.config import Config
from localtrain.files import read_table, write_table
from localtrain.hardware import Machine
from localtrain.plan import Choice, Measured, Tuned
from localtrain.batch import check_world, total_steps
from localtrain.planner import budget, candidates, choose_backend

CACHE_FILE = "tuning.json"
PROBE = ["-m", "localtrain.backends.probe"]
"""The measuring program, run as `python PROBE SPEC_JSON`."""
RUNNER_UP = 1.10
"""A dtype whose eager step is within this factor of the fastest is also timed compiled."""


def wanted(config: Config, resumed: bool) -> bool:
    """Whether anything is left to measure: not with run.autotune=off, not on resume (the plan is
    in the checkpoint), not when the user set dtype, compile and micro-batch."""
    return config.run.autotune != "off" and not resumed and not (
        config.train.dtype != "auto" and config.run.compile != "auto" and config.train.micro_batch_size)


def cache_key(config: Config, machine: Machine, vocab_size: int, world_size: int, choices: list[Choice]) -> str:
    backend, device, _ = choose_backend(config, machine)
    parts = [platform.node(), machine.cpu_model, [g.name for g in machine.gpus], machine.backends.get(backend, "?"),
             backend, device, config.run.threads, asdict(config.model), vocab_size, config.train.batch_size,
             world_size, [asdict(c) for c in choices]]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cached(config: Config, machine: Machine, vocab_size: int, cache_dir: Path, world_size: int = 1,
           local_world_size: int = 1) -> Tuned | None:
    """Earlier measurements of this shape on this machine, if there are any."""
    choices = candidates(config, machine, vocab_size, world_size, local_world_size)
    return _kept(read_table(cache_dir / CACHE_FILE).get(cache_key(config, machine, vocab_size, world_size, choices)))


def _kept(entry: object) -> Tuned | None:
    """A cache entry's measurements (None: no entry, or one this version cannot read)."""
    try:
        return Tuned(tuple(Measured.from_dict(m) for m in entry["measured"]), cached=True) if entry else None
    except (KeyError, TypeError, ValueError):
        return None


class Probe:
    """The measuring subprocess: one candidate in, one result out; restarted after a crash."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.proc: subprocess.Popen | None = None

    def measure(self, choice: Choice, best_step_s: float | None) -> Measured:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, *PROBE, json.dumps(self.spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
        try:
            self.proc.stdin.write(json.dumps({**asdict(choice), "best_step_s": best_step_s}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            return Measured(choice, "crashed", detail=self._death())
        return Measured(choice, **json.loads(line))

    def _death(self) -> str:
        code = self.proc.wait()
        err = (self.proc.stderr.read() if self.proc.stderr else "").strip().splitlines()
        self.proc = None
        reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"the measuring process died ({reason})" + (f": {err[-1][:300]}" if err else "")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _fastest(found: list[Measured]) -> Measured | None:
    ok = [m for m in found if m.status == "ok"]
    return min(ok, key=lambda m: m.step_s) if ok else None


def search(choices: list[Choice], measure) -> list[Measured]:  # measure: (Choice, best_step_s) -> Measured
    """The bounded search over `choices` (largest micro-batch first per dtype and compile)."""
    found: list[Measured] = []

    def run(choice: Choice) -> Measured | None:
        if any(m.choice == choice for m in found):
            return None
        best = _fastest(found)
        m = measure(choice, best.step_s if best else None)
        found.append(m)
        return m

    compiles = sorted({c.compile for c in choices})
    first = compiles[0]  # eager where both are candidates
    dtypes = list(dict.fromkeys(c.dtype for c in choices))
    for dtype in dtypes:  # 1) each dtype at its largest micro-batch
        top = next((c for c in choices if c.dtype == dtype and c.compile == first), None)
        if top is not None:
            run(top)
    best = _fastest(found)
    if best is None:
        return found
    for c in choices:  # 2) the smaller micro-batches of the fastest dtype
        if c.dtype == best.choice.dtype and c.compile == first:
            run(c)
    best = _fastest(found)
    if best is None or len(compiles) == 1:
        return found
    ok_eager = [m for m in found if m.status == "ok" and m.choice.compile == first]
    eager = {dtype: min((m for m in ok_eager if m.choice.dtype == dtype), key=lambda m: m.step_s)
             for dtype in dict.fromkeys(m.choice.dtype for m in ok_eager)}  # the fastest eager one of each dtype
    close = [d for d, m in eager.items() if m.step_s <= RUNNER_UP * best.step_s]
    for dtype in sorted(close, key=lambda d: eager[d].step_s):  # 3) compiled, at the fastest micro-batch
        same = [c for c in choices if c.dtype == dtype and c.compile != first]
        want = best.choice.micro_batch_size if dtype == best.choice.dtype else eager[dtype].choice.micro_batch_size
        target = next((c for c in same if c.micro_batch_size <= want), None)
        if target is not None:
            run(target)
    return found


def tune(config: Config, machine: Machine, vocab_size: int, cache_dir: Path, emit: ev.Emit,
         world_size: int = 1, local_world_size: int = 1) -> Tuned:
    """Measure (or read from the cache) the candidates of this run's shape on this machine."""
    choices = candidates(config, machine, vocab_size, world_size, local_world_size)
    key = cache_key(config, machine, vocab_size, world_size, choices)
    table = read_table(cache_dir / CACHE_FILE)
    found = _kept(table.get(key))
    if found is not None:
        emit(ev.Tune(stage="cached", message=f"Using {len(found.measured)} measurements of this shape from"
                     f" {cache_dir / CACHE_FILE}."))
        return found
    backend, device, _ = choose_backend(config, machine)
    rank_batch = check_world(config, world_size)
    spec = {"backend": backend, "device": device, "threads": config.run.threads, "vocab_size": vocab_size,
            "model": asdict(config.model), "rank_batch": rank_batch, "steps": total_steps(config, vocab_size)}
    if config.run.memory_budget != "auto":
        spec["memory_limit"] = budget(config, machine, device, local_world_size)[0]
    emit(ev.Tune(stage="start", message=f"Timing up to {len(choices)} candidates of this shape on this machine"
                 " (once; the results are cached)."))
    start = time.perf_counter()
    probe = Probe(spec)
    tokens = rank_batch * config.model.seq_len
    preloading: list[threading.Thread] = []

    def measure(choice: Choice, best_step_s: float | None) -> Measured:
        if choice.compile and not preloading:
            # The run's own framework loads here while the measuring process compiles.
            preloading.append(threading.Thread(target=preload, args=(backend,), daemon=True))
            preloading[0].start()
        m = probe.measure(choice, best_step_s)
        emit(ev.Tune(stage="measured", candidate=choice.label, status=m.status, step_s=m.step_s
                     if m.status in ("ok", "slower") else 0.0,
                     tokens_per_s=tokens / m.step_s if m.status in ("ok", "slower") else 0.0,
                     peak_bytes=m.peak_bytes, warmup_s=m.warmup_s, message=m.detail))
        return m

    try:
        measured = search(choices, measure)
    finally:
        probe.close()
    seconds = time.perf_counter() - start
    table[key] = {"measured": [m.to_dict() for m in measured], "seconds": seconds, "time": time.time()}
    write_table(cache_dir / CACHE_FILE, table)
    return Tuned(tuple(measured), seconds=seconds)
