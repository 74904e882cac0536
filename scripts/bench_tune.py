"""What the tuner costs on this machine, and how near the memory model came to what it measured.

Runs the tuner for one preset as a first run on a new machine does (an empty tuning cache, and
an empty compiler cache and temporary directory of its own), then prints each candidate it
timed beside the memory model's prediction of that candidate's peak, the seconds the tuning
took, and the plan it leads to. The peak measured is the process's resident high-water mark on
a CPU (against the model's whole prediction) and `torch.cuda.max_memory_allocated` on CUDA
(against the model's tensors: its terms but the CUDA context and the compiler's code).

    python3 scripts/bench_tune.py --preset tiny-shakespeare
    python3 scripts/bench_tune.py --preset gpt2-124m --out tune.json     # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from localtrain import config as cfg, tuner
from localtrain.events import Tune
from localtrain.hardware import probe
from localtrain.memory import GB
from localtrain.planner import Shape, estimate_vocab, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-shakespeare")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--vocab", type=int, default=0, help="vocabulary (default: the preset's estimate)")
    ap.add_argument("--warm-compiler", action="store_true",
                    help="keep the compiler's usual cache and temporary directory (a machine that compiled before)")
    ap.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()

    config = cfg.resolve(args.preset, args.overrides)
    machine = probe()
    vocab = args.vocab or estimate_vocab(config)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.warm_compiler:
            # The measuring process inherits these: its compile starts as cold as on a new machine.
            os.environ.update(TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor", TRITON_CACHE_DIR=f"{tmp}/triton",
                              TMPDIR=tmp)
        start = time.perf_counter()

        def show(e) -> None:
            if isinstance(e, Tune) and e.stage == "measured":
                print(f"  [{time.perf_counter() - start:6.1f} s] {e.candidate}: {e.status}"
                      + (f", {e.step_s * 1000:.1f} ms a step" if e.step_s else ""), flush=True)

        tuned = tuner.tune(config, machine, vocab, Path(tmp) / "cache", show)
        seconds = time.perf_counter() - start
    p = plan(config, machine, vocab, tuned=tuned)
    shape = Shape(config, vocab, p.device, 0)
    tokens = config.train.batch_size * config.model.seq_len
    where = ", ".join(g.name for g in machine.gpus) or machine.cpu_model
    print(f"{args.preset} on {p.device} ({where}), vocab {vocab}, {tokens:,} tokens an optimizer step,"
          f" {p.total_steps:,} steps; tuning took {seconds:.1f} s ({len(tuned.measured)} candidates)")
    print(f"{'candidate':44} {'status':7} {'ms/step':>9} {'tok/s':>11} {'warm-up':>8} {'measured':>9}"
          f" {'predicted':>9} {'error':>7}")
    rows = []
    for m in tuned.measured:
        predicted = shape.peak(m.choice).measured_as(p.device)
        ran = m.status in ("ok", "slower")
        err = predicted / m.peak_bytes - 1 if ran and m.peak_bytes else None
        rows.append({**m.to_dict(), "predicted_bytes": predicted, "error": err})
        print(f"{m.choice.label:44} {m.status:7} {m.step_s * 1000 if ran else 0:9.1f}"
              f" {tokens / m.step_s if ran else 0:11,.0f} {m.warmup_s:7.1f}s {m.peak_bytes / GB:8.2f}G"
              f" {predicted / GB:8.2f}G " + (f"{err:+7.1%}" if err is not None else "      -")
              + (f"  {m.detail}" if m.status not in ("ok", "slower") else ""), flush=True)
    share = seconds / (seconds + p.predicted_seconds) if p.predicted_seconds else 0.0
    print(f"pick: {p.dtype}, {'compiled' if p.compile else 'eager'}, micro-batch {p.micro_batch_size}"
          f" x {p.grad_accum_steps}; {p.predicted_tokens_per_s:,.0f} tok/s; predicted run {p.predicted_seconds:,.0f} s,"
          f" so the tuning is {share:.1%} of the whole; why: {p.why}")
    if args.out:
        args.out.write_text(json.dumps({"preset": args.preset, "device": p.device, "vocab": vocab,
                                        "tuning_s": seconds, "rows": rows, "pick": p.choice.label,
                                        "predicted_seconds": p.predicted_seconds}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
