"""What torch.compile costs the first step on this machine, cold and warm, and whether
compiling less of the model makes the cold compile cheaper.

For a preset's shape and dtype, each way of compiling is timed in a new process with an
empty compiler cache (its own TMPDIR too, so the precompiled headers are built afresh, as
on a machine that never compiled), then again in a new process that finds that cache:

- whole: the training module compiled as one graph (what the torch backend does);
- nested: the same, each transformer block marked as a region compiled once and reused
  (torch.compiler.nested_compile_region);
- regional: each block compiled on its own, the embedding, head and loss eager.

Each row prints the first step's seconds (the compile included) and the part of them the
compiler spends checking which vector instruction sets it can build and load here (a test
program a set, compiled once per cache and loaded in a new process every time), the median
of the next steps, the kernels the compiler built (shared objects in its cache) and the cold compile
over the run's steps: how many steps of the eager step's time it costs. The eager step is
timed the same way, for the comparison.

    python3 scripts/bench_compile.py --preset tiny-shakespeare --dtype float32
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

WAYS = ("eager", "whole", "nested", "regional")


def child(way: str, preset: str, dtype: str, steps: int, vocab: int) -> dict:
    """One process: build the preset's model, time its first step and `steps` more."""
    import numpy as np
    import torch

    from localtrain import config as cfg
    from localtrain.backends import backend_class, torch_attention, torch_model
    from localtrain.config import TrainConfig
    from localtrain.planner import estimate_vocab

    config = cfg.resolve(preset)
    vocab = vocab or estimate_vocab(config)
    if way == "nested":
        torch_model.Block.forward = torch.compiler.nested_compile_region(torch_model.Block.forward)
    b = backend_class("torch")("cpu", dtype, 0, way in ("whole", "nested"))
    b.build(config.model, vocab, 0)
    b.configure_optimizer(TrainConfig())
    if way == "regional":
        torch_attention.cache_upcast_graphs()
        b.model.complex_rope = False  # as the backend sets it for a compiled model
        for layer in b.model.model.layers:
            layer.compile(dynamic=False)
    micro, seq = config.train.batch_size, config.model.seq_len
    data = np.random.default_rng(0).integers(0, vocab, (micro, seq + 1)).astype(np.int64)
    batch = [(data[:, :-1], data[:, 1:])]
    start = time.perf_counter()
    if way != "eager":
        # The compiler's check of which vector instruction sets this machine's C++ compiler can build
        # and load: a test program a set, built once per cache, then loaded in a new process each run.
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list

        valid_vec_isa_list()
    isa = time.perf_counter() - start
    b.train_step(batch, 1e-4)
    first = time.perf_counter() - start
    b.train_step(batch, 1e-4)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        b.train_step(batch, 1e-4)
        times.append(time.perf_counter() - start)
    return {"first_s": first, "isa_s": isa, "step_s": statistics.median(times)}


def measure(way: str, preset: str, dtype: str, steps: int, vocab: int, tmp: Path) -> dict:
    env = {**os.environ, "TMPDIR": str(tmp), "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")}
    out = subprocess.run(
        [sys.executable, __file__, "--child", way, "--preset", preset, "--dtype", dtype, "--steps", str(steps),
         "--vocab", str(vocab)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-shakespeare")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=10, help="steps timed after the first two")
    p.add_argument("--vocab", type=int, default=0, help="the vocabulary (default: the planner's estimate;"
                   " tiny-shakespeare's text has 65 characters)")
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    p.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.dtype, args.steps, args.vocab)))
        return
    from localtrain import config as cfg

    run_steps = cfg.resolve(args.preset).train.max_steps
    print(f"{args.preset}, {args.dtype}, micro-batch = the preset's batch, {run_steps} steps a run")
    print(f"{'way':<9} {'cold first s':>12} {'of it ISA s':>11} {'warm first s':>12} {'of it ISA s':>11}"
          f" {'step ms':>8} {'kernels':>7} {'cold / eager steps':>18}")
    eager_s = None
    for way in args.ways:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            cold = measure(way, args.preset, args.dtype, args.steps, args.vocab, tmp)
            warm = measure(way, args.preset, args.dtype, args.steps, args.vocab, tmp)
            kernels = len(list((tmp / "inductor").rglob("*.so"))) if way != "eager" else 0
        step = statistics.median([cold["step_s"], warm["step_s"]])
        if way == "eager":
            eager_s = step
        ratio = f"{cold['first_s'] / eager_s:,.0f}" if eager_s and way != "eager" else "-"
        print(f"{way:<9} {cold['first_s']:>12.2f} {cold['isa_s']:>11.2f} {warm['first_s']:>12.2f} {warm['isa_s']:>11.2f}"
              f" {step * 1000:>8.2f} {kernels:>7} {ratio:>18}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
