"""Per-rank peak memory of a training step under DDP and FSDP, measured against the planner.

For one model shape, runs a 2-process torchrun job (gloo on CPU, NCCL on CUDA) under DDP
and then under FSDP. Each rank builds the backend, configures AdamW, and trains a few
steps on random tokens; its peak is the high-water mark of those steps (CPU: the peak
RSS, reset after the build; CUDA: max_memory_allocated, reset likewise, beside the
prediction without its CUDA-context term, which the allocator does not see). The table
shows the planner's per-rank prediction beside each measurement, and how much FSDP saved
per rank against the share the planner expected. With --nproc 1 the `ddp` job is one
plain process.

    python scripts/bench_fsdp.py                       # 8 x 512 model, 29.5M parameters, CPU
    python scripts/bench_fsdp.py --device cuda --nproc 1 --modes fsdp --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MB = 1024**2


def model_config(args):
    from localtrain.config import ModelConfig

    return ModelConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, seq_len=args.seq_len)


def worker(args) -> None:
    """One rank: build, train `--steps` steps, print this rank's measured peak as JSON."""
    import numpy as np

    from localtrain.backends.torch_backend import TorchBackend
    from localtrain.backends.torch_dist import init
    from localtrain.backends.torch_fsdp import FSDPBackend
    from localtrain.config import TrainConfig

    dist = init(args.device)
    cls = FSDPBackend if args.worker == "fsdp" else TorchBackend
    backend = cls(args.device, args.dtype, 0, False)
    backend.set_distributed(dist)
    model = model_config(args)
    backend.build(model, args.vocab, 0)
    backend.configure_optimizer(TrainConfig())
    rng = np.random.default_rng(dist.rank)
    tokens = rng.integers(0, args.vocab, (args.micro, model.seq_len + 1)).astype(np.uint16)
    batch = [(tokens[:, :-1], tokens[:, 1:])]
    dist.barrier()
    backend.reset_peak_memory()
    start = time.perf_counter()
    for _ in range(args.steps):
        backend.train_step(batch, 1e-4)
    seconds = (time.perf_counter() - start) / args.steps
    mine = json.dumps({"rank": dist.rank, "peak": backend.peak_memory_bytes(), "step_s": seconds})
    found = dist.gather_text(mine)
    if dist.is_main:
        print("RESULT " + json.dumps([json.loads(x) for x in found]), flush=True)
    dist.barrier()
    dist.close()
    # The DDP module still holds the gloo group: destroying it at interpreter exit can wait
    # forever on gloo's own thread (seen on torch 2.13). Nothing is left to tear down.
    sys.stdout.flush()
    os._exit(0)


def launch(args, mode: str) -> list[dict]:
    # The worker's flags spelled out: torchrun would take `--nproc` for an abbreviation of its own.
    shape = {"--n-layer": args.n_layer, "--n-head": args.n_head, "--n-embd": args.n_embd, "--seq-len": args.seq_len,
             "--vocab": args.vocab, "--micro": args.micro, "--steps": args.steps, "--device": args.device,
             "--dtype": args.dtype}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}", "--standalone",
           "--max-restarts=0", __file__, "--worker", mode, *(f"{k}={v}" for k, v in shape.items())]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"the {mode} job failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--n-embd", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--micro", type=int, default=1, help="sequences per rank per step")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--modes", default="ddp,fsdp", help="comma-separated: ddp, fsdp")
    ap.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    from localtrain.metrics import params_count
    from localtrain.memory import memory_estimate

    model = model_config(args)
    params = params_count(model, model.vocab_rows(args.vocab))
    print(f"model: {model.n_layer} x {model.n_embd}, seq {model.seq_len}, vocab {args.vocab}: {params / 1e6:.1f}M"
          f" parameters, {16 * params / MB:,.0f} MB of fp32 weights, gradients and AdamW moments;"
          f" {args.nproc} processes on {args.device} ({args.dtype}), micro-batch {args.micro} per rank")
    print(f"{'mode':5} {'rank':>4} {'predicted':>10} {'measured':>10} {'error':>7} {'s/step':>7}")
    if args.device == "cuda":
        print("(CUDA: max_memory_allocated against the prediction's tensors: less its CUDA-context overhead term)")
    measured: dict[str, int] = {}
    predicted: dict[str, int] = {}
    for mode in args.modes.split(","):
        # DDP over one process is no DDP: the backend then trains alone.
        parallel = mode if (mode == "fsdp" or args.nproc > 1) else "none"
        est = memory_estimate(model, args.vocab, args.micro, args.dtype, args.device, parallel=parallel,
                              world_size=args.nproc)
        total = est.measured_as(args.device)
        predicted[mode] = total
        ranks = launch(args, mode)
        for r in ranks:
            err = (total - r["peak"]) / r["peak"]
            print(f"{parallel:5} {r['rank']:4} {total / MB:9.0f}M {r['peak'] / MB:9.0f}M {err:+7.1%} {r['step_s']:7.2f}")
        measured[mode] = max(r["peak"] for r in ranks)
    if {"ddp", "fsdp"} <= set(measured):
        saved, expected = measured["ddp"] - measured["fsdp"], predicted["ddp"] - predicted["fsdp"]
        share = 16 * params * (1 - 1 / args.nproc)
        print(f"FSDP saves {saved / MB:,.0f} MB per rank (measured), {expected / MB:,.0f} MB predicted; the sharded"
              f" share of the state is {share / MB:,.0f} MB, less the gathered blocks"
              f" ({(share - expected) / MB:,.0f} MB predicted). FSDP/DDP peak: {measured['fsdp'] / measured['ddp']:.2f}"
              f" measured, {predicted['fsdp'] / predicted['ddp']:.2f} predicted.")


if __name__ == "__main__":
    main()
