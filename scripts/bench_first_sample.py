"""How long a new user waits: `localtrain run` (the default preset) from a cold cache.

Starts the real CLI in a subprocess with an empty home and cache directory (so the
corpus is read, the tokenizer trained, the tokens encoded, the planner's candidates
timed and the matmul peak measured, with no compiled kernels from an earlier run), and
prints the seconds from the command to each milestone (data prepared, the tuner's
measurements, plan, first step, first live sample, each evaluation), the first sample
against the 60-second target, what the run needed (peak memory of its largest process,
disk of the prepared data and of the run directory), and the machine's load average
before and after: a load above its core count means other work ran beside it, and the
figures are not quiet-machine figures. Then it asks `localtrain doctor` (same cache)
for its predicted tokens/s and compares it, and the run's ETA at its midpoint, with what
the run did.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localtrain.jsonl import JsonlTail

TARGET_S = 60.0


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def interrupt_at(proc: subprocess.Popen, runs: Path, step: int) -> None:
    """Press Ctrl-C (SIGINT) once the run has logged `step`: the run keeps the default schedule and
    stops with a checkpoint."""
    tail: JsonlTail | None = None
    while proc.poll() is None:
        if tail is None:
            logs = list(runs.glob("*/events.jsonl")) if runs.is_dir() else []
            tail = JsonlTail(logs[0]) if logs else None
        batch = tail.read() if tail is not None else None
        if batch is not None and any(e.get("type") == "step" and e["step"] >= step for e in batch.items):
            proc.send_signal(signal.SIGINT)
            return
        if batch is None or not batch.more:
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="stop the run after this many steps")
    ap.add_argument("--interrupt", action="store_true",
                    help="run the default schedule and press Ctrl-C after --steps steps (the plan is the default"
                         " run's; without it the run is told --max-steps, which the tuner's choice takes into account)")
    ap.add_argument("--probe-first", action="store_true",
                    help="run `localtrain doctor --probe` (untimed) first: the run finds the tuner's measurements cached")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting passed on to the run (e.g. run.autotune=off), repeatable")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp, "cache")
        env = {**os.environ, "LOCALTRAIN_CACHE": str(cache), "HOME": tmp,
               "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp, "inductor")), "TRITON_CACHE_DIR": str(Path(tmp, "triton"))}
        if args.probe_first:
            subprocess.run([sys.executable, "-m", "localtrain", "doctor", "--probe", "--preset", "python-stdlib",
                            *(x for kv in args.set for x in ("--set", kv))],
                           cwd=tmp, env=env, capture_output=True, text=True, check=True)
        start = time.time()  # the events carry wall-clock times: compare like with like
        limit = [] if args.interrupt else ["--max-steps", str(args.steps)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "localtrain", "run", *limit, "--plain", *(x for kv in args.set for x in ("--set", kv))],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if args.interrupt:
            interrupt_at(proc, Path(tmp, "runs"), args.steps)
        _, stderr = proc.communicate()
        wall = time.time() - start
        if proc.returncode:  # a run stopped by one Ctrl-C exits 0 too
            raise SystemExit(stderr)
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        (run_dir,) = Path(tmp, "runs").iterdir()
        events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
        data_bytes, run_bytes = disk_bytes(cache / "data"), disk_bytes(run_dir)
        doctor = subprocess.run([sys.executable, "-m", "localtrain", "doctor", "--preset", "python-stdlib", "--json",
                                 *(x for kv in args.set for x in ("--set", kv))],
                                cwd=tmp, env=env, capture_output=True, text=True)
        predicted = json.loads(doctor.stdout)["capacity"][0]["plan"] if doctor.stdout.strip() else {}
    load_after = os.getloadavg()

    def first(kind: str, **match) -> dict:
        return next(e for e in events if e["type"] == kind and all(e.get(k) == v for k, v in match.items()))

    tuned = [e for e in events if e["type"] == "tune" and e["stage"] == "measured"]
    rows = [
        ("data prepared", first("prepare", stage="done")),
        *([("tuner started", first("tune", stage="start")),
           (f"tuner done ({len(tuned)} candidates timed)", tuned[-1])] if tuned else []),
        ("plan (model built, peak measured)", first("plan")),
        ("step 1", first("step")),
        ("first live sample", first("sample")),
    ]
    plan = first("plan")
    length = f"Ctrl-C after step {args.steps} of {plan.get('total_steps')}" if args.interrupt else f"{args.steps} steps"
    cold = "tuner's measurements cached by doctor --probe" if args.probe_first else "cold cache"
    print(f"localtrain run (python-stdlib preset{''.join(' --set ' + kv for kv in args.set)}), {cold},"
          f" {cores} CPUs, {plan['backend']}/{plan['device']} {plan['dtype']}"
          f"{' compiled' if plan.get('compiled') else ''}, micro-batch {plan.get('micro_batch_size')}, {length}")
    for name, e in rows:
        extra = f"  (step {e['step']})" if "step" in e else ""
        print(f"{name:36} {e['time'] - start:7.1f} s{extra}")
    for e in tuned:
        print(f"  tuner: {e['candidate']:34} {e['status']:8} {e['step_s']:6.3f} s a step, first step"
              f" {e['warmup_s']:5.1f} s, done at {e['time'] - start:6.1f} s")
    for e in (e for e in events if e["type"] == "eval"):
        print(f"eval at step {e['step']:<5}{'':22} {e['time'] - start:7.1f} s  val loss {e['val_loss']:.3f}")
    print(f"{'the whole command':36} {wall:7.1f} s")
    steps = [e for e in events if e["type"] == "step"]
    mean = sum(s["tokens_per_s"] for s in steps) / len(steps)
    later = sorted(s["tokens_per_s"] for s in steps[len(steps) // 2:])
    steady = later[len(later) // 2]
    print(f"training throughput: mean {mean:,.0f} tok/s, median of the second half {steady:,.0f} tok/s")
    if predicted.get("predicted_tokens_per_s"):
        print(f"doctor's predicted throughput (measured by the tuner): {predicted['predicted_tokens_per_s']:,.0f}"
              f" tok/s, {predicted['predicted_tokens_per_s'] / steady:.2f} x the run's second half")
    elif predicted:
        print(f"doctor predicts no throughput (its plan was decided by: {predicted.get('decided_by')})")
    else:
        print(f"doctor failed: {(doctor.stderr or doctor.stdout).strip()[-300:]}")
    if not args.interrupt:
        mid = min(steps, key=lambda e: abs(e["step"] - args.steps // 2))
        done = next(e for e in events if e["type"] == "done")
        actual = done["time"] - mid["time"]
        print(f"ETA at step {mid['step']}: {mid['eta_s']:,.0f} s; the run took {actual:,.0f} s more"
              f" ({mid['eta_s'] / actual:.2f} x)")
    sample_s = first("sample")["time"] - start
    print(f"first sample {sample_s:.1f} s after the command: {'within' if sample_s <= TARGET_S else 'OVER'}"
          f" the {TARGET_S:.0f} s target")
    print(f"peak memory of the largest process: {peak_rss / 2**30:.2f} GiB")
    print(f"disk: prepared data {data_bytes / 2**20:.1f} MiB, run directory {run_bytes / 2**20:.1f} MiB")
    busy = max(load_before[0], load_after[0]) > cores
    print(f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} on {cores} cores:"
          f" {'MEASURED UNDER LOAD (other work ran beside it)' if busy else 'quiet'}")


if __name__ == "__main__":
    main()
