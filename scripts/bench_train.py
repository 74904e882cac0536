"""Throughput and MFU of the torch CPU backend on the tiny-shakespeare shape.

Prints the measured matmul peak, tokens/s and MFU of the training step (4 layers,
4 heads, 128 wide, context 64, micro-batch 12), eager and compiled, and their ratios to
a reference. With --full PATH it also runs the whole 2,000-step tiny-shakespeare preset
on that file (the real CLI, in a subprocess) and reports its wall time, mean tokens/s
and final validation loss.

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


def measure_step(compile_: bool, steps: int) -> dict:
    from localtrain import metrics
    from localtrain.backends.torch_backend import TorchBackend
    from localtrain.config import resolve

    config = resolve("tiny-shakespeare")
    b = TorchBackend("cpu", "float32", 0, "on" if compile_ else "off")
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
    return {
        "wall_s": wall,
        "train_s": done["elapsed_s"],
        "mean_tok_s": tokens / sum(e["step_time_s"] for e in steps),
        "final_val_loss": evals[-1]["val_loss"],
        "final_val_bpb": evals[-1]["val_bpb"],
        "val_tokens": evals[-1]["val_tokens"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="timed steps per variant")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--full", type=Path, metavar="INPUT_TXT", help="also run the 2,000-step preset on this file")
    ap.add_argument("--ref-tok-s", type=float, default=12_000.0, help="reference tokens/s")
    ap.add_argument("--ref-val-loss", type=float, default=1.886, help="reference val loss after 2,000 steps")
    ap.add_argument("--ref-seconds", type=float, default=141.0, help="reference wall time of 2,000 steps")
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
