"""Check the planner and its tuner against brute force, on this machine.

1. Memory: for several shapes, the memory model's predicted peak of an eager and of a
   compiled step against the peak measured in its own process (CPU: the resident
   high-water mark; CUDA: max_memory_allocated). With --chunked, also the step as CUDA
   runs it (the chunked loss of backends/torch_loss.py) on this CPU, fp32 and bf16: the
   planner's CUDA prediction, less the terms the CUDA allocator does not count (context,
   compiler), against the tensor bytes live at the step's peak (the profiler's allocation
   events), which is what torch.cuda.max_memory_allocated counts on a GPU.
2. Choice: for the tiny-shakespeare and python-stdlib presets, every dtype x compile x
   micro-batch, each timed in its own process (the grid); the tuner's pick from a fresh
   cache; the pick's tokens/s as a share of the grid's best; and the pick beside the
   written-out GPT-2 baseline step of the same shape (scripts/bench_train.py), timed in
   alternating rounds in one process.
3. The whole run: `localtrain run --preset tiny-shakespeare --data FILE` with no settings
   (a fresh tuning cache and a cold compiler cache, then again with both warm) against
   the same run forced to what a rule reading the CPU flags would pick (bf16 eager on a
   CPU with native bf16, fp32 eager on one without).

    python3 scripts/bench_planner.py --data ../shared/data/tinyshakespeare/input.txt
    python3 scripts/bench_planner.py --shape tiny-shakespeare --chunked --skip-choice
    python3 scripts/bench_planner.py --device cuda --dtype bfloat16 --shape gpt2-124m --micro 16,32,48 \\
        --eager --skip-choice                                       # on a GPU: part 1 alone
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from localtrain import config as cfg, tuner
from localtrain.data.paths import cache_root
from localtrain.hardware import probe
from localtrain.memory import GB, memory_estimate
from localtrain.plan import Choice
from localtrain.batch import micro_batch_candidates
from localtrain.planner import plan

SHAPES = [
    # (label, overrides, vocab, micro-batch)
    ("tiny-shakespeare", ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.seq_len=64"], 68, 12),
    ("python-stdlib", [], 4096, 8),
    ("wide 768, vocab 256", ["model.n_layer=4", "model.n_head=8", "model.n_embd=768", "model.seq_len=256"], 256, 8),
    ("deep 12 layers", ["model.n_layer=12", "model.n_head=4", "model.n_embd=256", "model.seq_len=256"], 256, 8),
    ("context 1024", ["model.n_layer=4", "model.n_head=4", "model.n_embd=256", "model.seq_len=1024"], 256, 8),
    ("vocab 32k", ["model.n_layer=2", "model.n_head=4", "model.n_embd=256", "model.seq_len=256"], 32768, 8),
    # For a GPU: the shape of tests/backends/test_cuda.py, then more layers, a larger vocabulary, both.
    ("4 x 768, vocab 8192", ["model.n_layer=4", "model.n_head=12", "model.n_embd=768", "model.seq_len=1024"], 8192, 16),
    ("12 x 768, vocab 8192", ["model.n_layer=12", "model.n_head=12", "model.n_embd=768", "model.seq_len=1024"], 8192,
     16),
    ("4 x 768, vocab 50257", ["model.n_layer=4", "model.n_head=12", "model.n_embd=768", "model.seq_len=1024"], 50257,
     16),
    ("gpt2-124m", ["model.n_layer=12", "model.n_head=12", "model.n_embd=768", "model.seq_len=1024"], 50257, 16),
]
CPU_SHAPES = 6
"""The first shapes, the default on a CPU (the others are for a GPU's memory)."""


RETIME_ROUNDS = 3


def spec_for(config: cfg.Config, vocab: int, device: str = "cpu", **extra) -> dict:
    return {"backend": "torch", "device": device, "threads": config.run.threads, "vocab_size": vocab,
            "model": dataclasses.asdict(config.model), "rank_batch": config.train.batch_size, **extra}


def measure_alone(spec: dict, choice: Choice):
    """One candidate in a process of its own: a peak and a speed nothing else touched."""
    p = tuner.Probe(spec)
    try:
        return p.measure(choice, None)
    finally:
        p.close()


def accuracy(labels: list[str], device: str = "cpu", dtype: str = "float32", micros: list[int] | None = None,
             modes: tuple[bool, ...] = (False, True)) -> None:
    """Each shape x micro-batch x step in a process of its own, against the memory model: on a CPU the
    resident high-water mark against its whole prediction, on CUDA max_memory_allocated against its
    tensors (all but the CUDA context and the compiler's code, which the allocator does not count)."""
    what = "the resident peak" if device == "cpu" else "max_memory_allocated against the predicted tensors"
    print(f"1. Peak memory on {device}: the memory model against a process running optimizer steps ({dtype};"
          f" {what}):")
    print(f"{'shape':22} {'micro':>5} {'step':>8} {'predicted':>10} {'measured':>10} {'error':>7}")
    errors = []
    shapes = [s for s in SHAPES if s[0] in labels] if labels else SHAPES[:CPU_SHAPES]
    for label, overrides, vocab, micro in shapes:
        for mb in micros or [micro]:
            config = cfg.resolve("python-stdlib", overrides + [f"train.batch_size={mb}"])
            for compiled in modes:
                m = measure_alone(spec_for(config, vocab, device), Choice(dtype, compiled, mb))
                step = "compiled" if compiled else "eager"
                if m.status != "ok":
                    print(f"{label:22} {mb:5} {step:>8}  {m.status}: {m.detail}", flush=True)
                    continue
                est = memory_estimate(config.model, vocab, mb, dtype, device, compiled=compiled)
                predicted = est.measured_as(device)
                err = (predicted - m.peak_bytes) / m.peak_bytes
                errors.append(abs(err))
                print(f"{label:22} {mb:5} {step:>8} {predicted / GB:9.3f}G {m.peak_bytes / GB:9.3f}G {err:+7.1%}",
                      flush=True)
    if errors:
        print(f"largest error {max(errors):.1%} over {len(errors)} measurements\n")


# Shapes whose peak the loss makes (a large vocabulary) or the blocks make (a small one).
CHUNK_SHAPES = [
    ("vocab 8k", ["model.n_layer=2", "model.n_head=4", "model.n_embd=256", "model.seq_len=256"], 8192, 4),
    ("deep, vocab 256", ["model.n_layer=6", "model.n_head=4", "model.n_embd=256", "model.seq_len=256"], 256, 4),
]


def tensor_peak(step) -> int:
    """The most bytes of CPU tensors allocated at once during step(), above those live before it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def chunked_accuracy() -> None:
    import torch

    from localtrain.backends.base import loss_chunk_tokens
    from localtrain.backends.torch_backend import TorchBackend

    print("1b. The step as CUDA runs it (chunked loss), on this CPU: the planner's CUDA prediction less its"
          " context and compiler terms, against the tensor bytes live at the step's peak:")
    print(f"{'shape':18} {'dtype':>8} {'step':>8} {'micro':>5} {'predicted':>10} {'measured':>10} {'error':>7}")
    errors = []
    for label, overrides, vocab, micro in CHUNK_SHAPES:
        config = cfg.resolve("python-stdlib", overrides)
        for dtype in ("float32", "bfloat16"):
            for compiled in (False, True):
                for mb in (micro, 2 * micro):
                    b = TorchBackend("cpu", dtype, config.run.threads, compiled)
                    b.build(config.model, vocab, 0)
                    b.configure_optimizer(config.train)
                    b.model.loss_chunk = loss_chunk_tokens(b.model.model.embed_tokens.num_embeddings, "cuda")
                    data = np.random.default_rng(mb).integers(0, vocab, (mb, config.model.seq_len + 1))
                    batch = [(data[:, :-1], data[:, 1:])]
                    for _ in range(2):  # compiled, and the optimizer's moments made
                        b.train_step(batch, 1e-4)
                    held = [*b.model.parameters(), *b.model.buffers(),
                            *(t for st in b.optimizer.state.values() for t in st.values() if torch.is_tensor(t))]
                    measured = sum(t.numel() * t.element_size() for t in held) + tensor_peak(
                        lambda: b.train_step(batch, 1e-4))
                    est = memory_estimate(config.model, vocab, mb, dtype, "cuda", compiled=compiled)
                    predicted = est.tensors
                    err = (predicted - measured) / measured
                    errors.append(abs(err))
                    print(f"{label:18} {dtype:>8} {'compiled' if compiled else 'eager':>8} {mb:5}"
                          f" {predicted / 2**20:9.1f}M {measured / 2**20:9.1f}M {err:+7.1%}", flush=True)
    print(f"largest error {max(errors):.1%} over {len(errors)} measurements\n")


def grid(config: cfg.Config, vocab: int) -> list:
    rows = []
    for dtype in ("float32", "bfloat16"):
        for compiled in (False, True):
            for micro in micro_batch_candidates(config.train.batch_size):
                m = measure_alone(spec_for(config, vocab, timed_steps=10, step_budget_s=10.0),
                                  Choice(dtype, compiled, micro))
                rows.append(m)
                tok = config.train.batch_size * config.model.seq_len / m.step_s if m.status == "ok" else 0
                print(f"  {m.choice.label:38} {m.status:7} {tok:10,.0f} tok/s  {m.step_s * 1000:8.1f} ms"
                      f"  peak {m.peak_bytes / GB:.2f} GiB  warm-up {m.warmup_s:.1f} s", flush=True)
    return rows


def versus_gpt2(config: cfg.Config, vocab: int, choice: Choice, rounds: int = 7, steps: int = 40) -> dict:
    """Median tokens/s of the pick and of the GPT-2 baseline step (nanoGPT's AdamW choice, and fused
    AdamW), timed in alternating rounds; with the median ratios of the pick to each."""
    sys.path.insert(0, str(Path(__file__).parent))
    from gpt2_baseline import GPT2Baseline

    from localtrain.backends.torch_backend import TorchBackend

    m = config.model
    ours = TorchBackend("cpu", choice.dtype, config.run.threads, choice.compile)
    ours.build(m, vocab, 0)
    ours.configure_optimizer(config.train)
    data = np.random.default_rng(0).integers(0, vocab, (config.train.batch_size, m.seq_len + 1))
    x, y = data[:, :-1], data[:, 1:]
    micro = [(x[i:i + choice.micro_batch_size], y[i:i + choice.micro_batch_size])
             for i in range(0, len(x), choice.micro_batch_size)]
    steppers = {"pick": lambda: ours.train_step(micro, 1e-3)}
    for name, fused in (("nanoGPT", None), ("fused AdamW", True)):
        base = GPT2Baseline(vocab, m.n_layer, m.n_head, m.n_embd, m.seq_len, fused_adamw=fused)
        steppers[name] = lambda base=base: base.train_step([(x, y)])
    for step in steppers.values():
        for _ in range(10):
            step()
    seen: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            seen[name].append(x.size * steps / (time.perf_counter() - start))
    out = {name: statistics.median(v) for name, v in seen.items()}
    for name in ("nanoGPT", "fused AdamW"):
        out[f"ratio {name}"] = statistics.median(a / b for a, b in zip(seen["pick"], seen[name]))
    return out


def choice(machine, preset: str, vocab: int, baseline: bool) -> None:
    config = cfg.resolve(preset)
    print(f"2. {preset} (batch {config.train.batch_size}, {config.train.max_steps} steps): the grid, each in its own"
          " process (median of up to 10 timed steps):", flush=True)
    rows = grid(config, vocab)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        tuned = tuner.tune(config, machine, vocab, Path(cache), lambda e: None)
        cost = time.perf_counter() - start
    p = plan(config, machine, vocab, tuned=tuned)
    tokens = config.train.batch_size * config.model.seq_len
    ok = [r for r in rows if r.status == "ok"]
    best = min(ok, key=lambda r: r.step_s)
    mine = next(r for r in ok if r.choice == p.choice)
    print(f"  tuner: {len(tuned.measured)} candidates timed in {cost:.1f} s; picked {p.choice.label} ({p.why})")
    print(f"  the pick in the grid: {tokens / mine.step_s:,.0f} tok/s = {best.step_s / mine.step_s:.0%} of the grid's"
          f" best ({best.choice.label}: {tokens / best.step_s:,.0f} tok/s)")
    steps = config.train.max_steps
    print(f"  predicted wall time of {steps} steps: pick {mine.wall_s(steps):.1f} s, grid's least"
          f" {min(r.wall_s(steps) for r in ok):.1f} s", flush=True)
    if best is not mine:
        # One pass of the grid is one process per candidate: two within a few percent can swap
        # places from one process to the next. Time both again, alternately, each in its own process.
        spec = spec_for(config, vocab, timed_steps=10, step_budget_s=10.0)
        shares = [measure_alone(spec, best.choice).step_s / measure_alone(spec, mine.choice).step_s
                  for _ in range(RETIME_ROUNDS)]
        print(f"  the pick and the grid's best timed again, alternately, {RETIME_ROUNDS} times each: the pick at"
              f" {statistics.median(shares):.0%} of it (median; {', '.join(f'{x:.0%}' for x in shares)})", flush=True)
    if baseline:
        r = versus_gpt2(config, vocab, p.choice)
        print(f"  alternating rounds: the pick {r['pick']:,.0f} tok/s; the GPT-2 baseline (fp32 eager) with nanoGPT's"
              f" AdamW (fused on CUDA only) {r['nanoGPT']:,.0f} tok/s, median ratio {r['ratio nanoGPT']:.2f}x;"
              f" with fused AdamW {r['fused AdamW']:,.0f} tok/s, {r['ratio fused AdamW']:.2f}x", flush=True)
    print()


def whole_run(machine, data: Path) -> None:
    rule = "bfloat16" if machine.cpu_native_bf16 else "float32"
    print(f"3. The whole run: localtrain run --preset tiny-shakespeare --data {data}")
    with tempfile.TemporaryDirectory() as tmp:
        # The compiler keeps its precompiled headers under the system's temporary directory,
        # whatever its cache directory: a TMPDIR of the run's own makes the first compile as cold
        # as on a machine that never compiled.
        env = {**os.environ, "LOCALTRAIN_CACHE": f"{tmp}/cache", "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor",
               "TMPDIR": tmp}

        def run(name: str, *extra: str) -> float:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "localtrain", "run", "--preset", "tiny-shakespeare",
                                   "--data", str(data), "--plain", "--run-dir", f"{tmp}/{name}", *extra],
                                  env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr}")
            plan_line = next(line for line in proc.stdout.splitlines() if line.startswith("plan:"))
            print(f"  {name:34} {wall:7.1f} s   {plan_line[6:90]}", flush=True)
            return wall

        worst = run(f"rule ({rule} eager)", "--set", f"train.dtype={rule}", "--set", "run.compile=off",
                    "--set", "run.autotune=off")
        fresh = run("default, fresh caches")
        warm = run("default, cached measurements")
        print(f"  default / rule: {fresh / worst:.2f}x with a fresh tuning and compiler cache,"
              f" {warm / worst:.2f}x with both warm\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="tinyshakespeare input.txt, for the whole-run comparison")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--shape", action="append", default=[], choices=[s[0] for s in SHAPES],
                    help="part 1 on this shape only (repeatable; default: every shape)")
    ap.add_argument("--device", default="cpu", help="part 1 on this device (cpu, cuda)")
    ap.add_argument("--dtype", default="float32", help="part 1 in this dtype")
    ap.add_argument("--micro", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="part 1 at these micro-batches (comma-separated; default: each shape's own)")
    ap.add_argument("--eager", action="store_true", help="part 1 with eager steps only")
    ap.add_argument("--chunked", action="store_true", help="also part 1b, the chunked loss as on CUDA")
    ap.add_argument("--skip-choice", action="store_true")
    args = ap.parse_args()
    machine = probe(cache_dir=cache_root(cfg.DataConfig()))
    flags = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2") if f in machine.cpu_flags]
    print(f"machine: {machine.cpu_model}, {machine.physical_cores} cores, {machine.ram_total_bytes / GB:.1f} GiB RAM,"
          f" flags {' '.join(flags)}, torch {machine.backends.get('torch')}\n", flush=True)
    if not args.skip_accuracy:
        accuracy(args.shape, args.device, args.dtype, args.micro, (False,) if args.eager else (False, True))
    if args.chunked:
        chunked_accuracy()
    if not args.skip_choice:
        choice(machine, "tiny-shakespeare", 68, baseline=True)
        choice(machine, "python-stdlib", 4096, baseline=False)
    if args.data:
        whole_run(machine, args.data)


if __name__ == "__main__":
    main()
