"""Throughput and MFU of the training step: on a device beside the GPT-2 baseline, or on this CPU.

With --device (cuda, cpu, mps) and --shape (a preset), the step of localtrain beside the
GPT-2 baseline of the same shape, compiled and eager, at the planner's micro-batch and
at --micro, with MFU, peak memory and the planner's prediction (bench_step.py); with
--backend mlx, MLX's compiled step beside torch's compiled step at one micro-batch
(bench_mlx.py). For a GPU:

    python3 scripts/bench_train.py --device cuda --shape gpt2-124m --out bench.json
    python3 scripts/bench_train.py --device cuda --shape gpt2-124m --backend mlx --out mlx.json

Without --device, the CPU benchmark of the tiny-shakespeare shape below.

Prints the measured matmul peak, tokens/s and MFU of the training step (4 layers,
4 heads, 128 wide, context 64, micro-batch 12), eager and compiled, and their ratios to
a reference. A shared 2-core machine's speed drifts by tens of percent from minute to
minute, so the script also times, in alternating rounds, the training step of a plain
GPT-2 block of the same shape (LayerNorm, learned positions, 4x GELU MLP, SDPA, AdamW):
nanoGPT's architecture and step, written out here as the baseline. With --full PATH it
also runs the whole 2,000-step tiny-shakespeare preset on that file (the real CLI, in a
subprocess) and reports its wall time, mean tokens/s, final validation loss and when
the validation loss first reached the reference's final one.

The reference figures default to nanoGPT's eager fp32 CPU recipe as quoted for these
2-core machines; pass --ref-* with figures measured on the machine at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gpt2_baseline import GPT2Baseline


def alternate(rounds: int, steps: int) -> tuple[float, float, float, int]:
    """Median tokens/s of localtrain's eager step and the GPT-2 baseline, timed in turns."""
    from localtrain.backends.torch_backend import TorchBackend
    from localtrain.config import resolve

    config = resolve("tiny-shakespeare")
    m = config.model
    ours = TorchBackend("cpu", "float32")
    ours.build(m, 65, 0)
    ours.configure_optimizer(config.train)
    base = GPT2Baseline(65, m.n_layer, m.n_head, m.n_embd, m.seq_len)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 65, (config.train.batch_size, m.seq_len + 1)).astype(np.uint16)
    x, y = data[:, :-1], data[:, 1:]
    tokens = x.size
    for _ in range(20):
        ours.train_step([(x, y)], 1e-3)
        base.train_step([(x, y)])
    ratios, a_all, b_all = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            ours.train_step([(x, y)], 1e-3)
        a = tokens * steps / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(steps):
            base.train_step([(x, y)])
        b = tokens * steps / (time.perf_counter() - start)
        ratios.append(a / b)
        a_all.append(a)
        b_all.append(b)
    return statistics.median(a_all), statistics.median(b_all), statistics.median(ratios), base.params


def measure_step(compile_: bool, steps: int, backend: str = "torch") -> dict:
    from localtrain import metrics
    from localtrain.config import resolve
    from localtrain.backends import backend_class

    config = resolve("tiny-shakespeare")
    b = backend_class(backend)("cpu", "float32", 0, compile_)
    vocab = 65
    b.build(config.model, vocab, 0)
    b.configure_optimizer(config.train)
    rng = np.random.default_rng(0)
    batch = config.train.batch_size
    data = rng.integers(0, vocab, (batch, config.model.seq_len + 1)).astype(np.uint16)
    x, y = data[:, :-1], data[:, 1:]
    start = time.perf_counter()
    for _ in range(20):
        b.train_step([(x, y)], 1e-3)
    warm = time.perf_counter() - start
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        b.train_step([(x, y)], 1e-3)
        times.append(time.perf_counter() - t)
    tokens = batch * config.model.seq_len
    flops = metrics.flops_per_token(config.model, vocab)
    return {
        "params": b.num_params(),
        "flops_per_token": flops,
        "warmup_s": warm,
        "median_tok_s": tokens / statistics.median(times),
        "mean_tok_s": tokens / statistics.mean(times),
        "threads": b.threads,
    }


def full_run(path: Path, compile_: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LOCALTRAIN_CACHE": os.path.join(tmp, "cache")}
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "localtrain", "run", "--preset", "tiny-shakespeare", "--data", str(path),
             "--run-dir", os.path.join(tmp, "run"), "--plain", "--set", f"run.compile={'on' if compile_ else 'off'}"],
            env=env, capture_output=True, text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(proc.stderr)
        events = [json.loads(x) for x in Path(tmp, "run", "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    evals = [e for e in events if e["type"] == "eval"]
    done = events[-1]
    tokens = steps[-1]["tokens"]
    start_time = next(e for e in events if e["type"] == "plan")["time"]
    return {
        "evals": [(e["step"], e["val_loss"], e["time"] - start_time) for e in evals],
        "wall_s": wall,
        "train_s": done["elapsed_s"],
        "mean_tok_s": tokens / sum(e["step_time_s"] for e in steps),
        "final_val_loss": evals[-1]["val_loss"],
        "final_val_bpb": evals[-1]["val_bpb"],
        "val_tokens": evals[-1]["val_tokens"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", help="compare with the GPT-2 baseline on this device (cuda, cpu, mps)")
    ap.add_argument("--shape", default="gpt2-124m", help="with --device: the preset whose model shape to time")
    ap.add_argument("--micro", type=lambda s: [int(v) for v in s.split(",")], default=[12, 32],
                    help="with --device: micro-batches beside the planner's (comma-separated)")
    ap.add_argument("--no-plan", dest="plan", action="store_false", help="with --device: skip the planner's micro-batch")
    ap.add_argument("--variants", type=lambda s: s.split(","), default=["compiled", "eager"],
                    help="with --device: compiled, eager or both")
    ap.add_argument("--models", type=lambda s: s.split(","), default=["localtrain", "gpt2"],
                    help="with --device: localtrain, gpt2 or both")
    ap.add_argument("--warmup", type=int, default=10, help="with --device: warm-up steps (compilation included)")
    ap.add_argument("--dtype", default="auto",
                    help="with --device: training dtype (auto: the planner's default, bf16 on a recent GPU)")
    ap.add_argument("--vocab", type=int, default=0, help="with --device: vocabulary (default: the preset's)")
    ap.add_argument("--compile-mode", default=None,
                    help="with --device: torch.compile mode, e.g. max-autotune-no-cudagraphs (default: its default)")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="with --device: skip the kernel-time profile at the first micro-batch of the first variant")
    ap.add_argument("--row-s", type=float, default=8.0,
                    help="with --device: seconds of steps a row spends past its first two (at least 5 timed)")
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="with --device: start no new row after this many seconds")
    ap.add_argument("--out", type=Path, help="with --device: also write every figure to this JSON file")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (300 on the CPU benchmark, 15 with --device)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds against the GPT-2 baseline")
    ap.add_argument("--full", type=Path, metavar="INPUT_TXT", help="also run the 2,000-step preset on this file")
    ap.add_argument("--ref-tok-s", type=float, default=12_000.0, help="reference tokens/s")
    ap.add_argument("--ref-val-loss", type=float, default=1.886, help="reference val loss after 2,000 steps")
    ap.add_argument("--ref-seconds", type=float, default=141.0, help="reference wall time of 2,000 steps")
    ap.add_argument("--backend", choices=["torch", "mlx"], default="torch",
                    help="mlx: time the MLX step beside torch's (with --device: both compiled, same micro-batch)")
    args = ap.parse_args()
    if args.device:
        args.steps = args.steps or 15
        if args.backend == "mlx":
            import bench_mlx

            return bench_mlx.run(args)
        import bench_step

        return bench_step.run(args)
    args.steps = args.steps or 300
    if args.backend == "mlx":
        return compare_mlx(args.steps)

    from localtrain.backends.torch_backend import TorchBackend

    peak = TorchBackend("cpu", "float32").measure_peak_flops()
    print(f"machine: {os.cpu_count()} CPUs; fp32 matmul peak measured now: {peak / 1e9:.1f} GFLOP/s")
    variants = [("eager", False)] + ([] if args.no_compile else [("compiled", True)])
    rows = []
    for name, comp in variants:
        r = measure_step(comp, args.steps)
        mfu = r["flops_per_token"] * r["median_tok_s"] / peak
        rows.append((name, r, mfu))
    r0 = rows[0][1]
    print(f"shape: tiny-shakespeare (4 layers, 4 heads, 128 wide, context 64, micro-batch 12), "
          f"{r0['params']:,} params, {r0['flops_per_token'] / 1e6:.2f} MFLOP/token, {r0['threads']} threads")
    print()
    print(f"{'variant':10} {'tok/s (median)':>15} {'tok/s (mean)':>13} {'MFU':>7} {'vs ref tok/s':>13} {'warm-up s':>10}")
    for name, r, mfu in rows:
        print(f"{name:10} {r['median_tok_s']:15,.0f} {r['mean_tok_s']:13,.0f} {mfu:7.1%} "
              f"{r['median_tok_s'] / args.ref_tok_s:12.2f}x {r['warmup_s']:10.1f}")
    ours, base, ratio, base_params = alternate(args.rounds, 100)
    print()
    print(f"alternating {args.rounds} rounds of 100 steps: localtrain eager {ours:,.0f} tok/s, GPT-2 baseline"
          f" ({base_params:,} params) {base:,.0f} tok/s; median per-round ratio {ratio:.2f}x")
    for name, comp in variants if args.full else []:
        f = full_run(args.full, comp)
        print()
        print(f"2,000-step tiny-shakespeare run (localtrain run --preset tiny-shakespeare, {name}):")
        print(f"  wall {f['wall_s']:.1f} s (training {f['train_s']:.1f} s) vs reference {args.ref_seconds:.0f} s:"
              f" {args.ref_seconds / f['wall_s']:.2f}x faster")
        print(f"  mean {f['mean_tok_s']:,.0f} tok/s vs reference {args.ref_tok_s:,.0f}:"
              f" {f['mean_tok_s'] / args.ref_tok_s:.2f}x")
        print(f"  final val loss {f['final_val_loss']:.4f} ({f['final_val_bpb']:.3f} bits/byte over"
              f" {f['val_tokens']:,} val tokens) vs reference {args.ref_val_loss:.3f}:"
              f" {args.ref_val_loss - f['final_val_loss']:+.3f} nats better")
        reached = next(((s, v, t) for s, v, t in f["evals"] if v <= args.ref_val_loss), None)
        if reached:
            print(f"  val loss first at or below {args.ref_val_loss:.3f} at step {reached[0]}"
                  f" ({reached[1]:.4f}), {reached[2]:.1f} s after the plan")


def compare_mlx(steps: int) -> None:
    """The MLX step beside torch's on the same shape, with each framework's own matmul peak."""
    from localtrain.backends.mlx_backend import MLXBackend
    from localtrain.backends.torch_backend import TorchBackend

    import mlx.core as mx

    peaks = {"torch": TorchBackend("cpu", "float32").measure_peak_flops(),
             "mlx": MLXBackend("cpu", "float32").measure_peak_flops()}
    print(f"machine: {os.cpu_count()} CPUs; mlx {mx.__version__} on {mx.default_device()}; fp32 matmul peak"
          f" measured now: torch {peaks['torch'] / 1e9:.1f} GFLOP/s, mlx {peaks['mlx'] / 1e9:.1f} GFLOP/s")
    rows = [("torch", "eager", measure_step(False, steps, "torch")),
            ("mlx", "eager", measure_step(False, steps, "mlx")),
            ("mlx", "mx.compile", measure_step(True, steps, "mlx"))]
    r0 = rows[0][2]
    print(f"shape: tiny-shakespeare (4 layers, 4 heads, 128 wide, context 64, micro-batch 12), "
          f"{r0['params']:,} params, {r0['flops_per_token'] / 1e6:.2f} MFLOP/token")
    print()
    print(f"{'backend':8} {'variant':11} {'tok/s (median)':>15} {'MFU of own peak':>16} {'vs torch':>9} {'warm-up s':>10}")
    for backend, name, r in rows:
        mfu = r["flops_per_token"] * r["median_tok_s"] / peaks[backend]
        print(f"{backend:8} {name:11} {r['median_tok_s']:15,.0f} {mfu:16.1%}"
              f" {r['median_tok_s'] / r0['median_tok_s']:8.3f}x {r['warmup_s']:10.1f}")


if __name__ == "__main__":
    main()
