"""Check the planner against measurements on this machine.

1. Prediction accuracy: for several shapes (width, depth, context, vocabulary and
   micro-batch varied) the analytic predicted peak against the peak measured in a
   subprocess running five optimizer steps (CPU: peak RSS; CUDA: max_memory_allocated).
2. Micro-batch choice: for a few presets, the tokens/s of every micro-batch size that
   divides the batch (brute force, each in its own process), against the planner's pick.
"""

from __future__ import annotations

import argparse
import dataclasses

from localtrain import config as cfg
from localtrain.calibration import measure
from localtrain.data.prepare import cache_root
from localtrain.hardware import probe
from localtrain.planner import GB, micro_batch_candidates, plan

SHAPES = [
    # (label, overrides, vocab, micro-batch)
    ("tiny-shakespeare", ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.seq_len=64"], 68, 12),
    ("python-stdlib", [], 4096, 8),
    ("wide 768, vocab 256", ["model.n_layer=4", "model.n_head=8", "model.n_embd=768", "model.seq_len=256"], 256, 8),
    ("deep 12 layers", ["model.n_layer=12", "model.n_head=4", "model.n_embd=256", "model.seq_len=256"], 256, 8),
    ("context 1024", ["model.n_layer=4", "model.n_head=4", "model.n_embd=256", "model.seq_len=1024"], 256, 8),
    ("vocab 32k", ["model.n_layer=2", "model.n_head=4", "model.n_embd=256", "model.seq_len=256"], 32768, 8),
    ("wikitext-103 shape", ["model.seq_len=512"], 32000, 4),
]


def accuracy(machine) -> None:
    print("Prediction accuracy (analytic model, no calibration):")
    print(f"{'shape':22} {'micro':>5} {'predicted':>10} {'measured':>10} {'error':>7}")
    errors = []
    for label, overrides, vocab, micro in SHAPES:
        preset = "python-stdlib" if label != "wikitext-103 shape" else "wikitext-103"
        config = cfg.resolve(preset, overrides + [f"train.batch_size={micro}", f"train.micro_batch_size={micro}"])
        p = plan(config, machine, vocab_size=vocab)
        measured = measure(p, config, micro)["peak_bytes"]
        predicted = sum(p.memory.values())
        err = (predicted - measured) / measured
        errors.append(abs(err))
        print(f"{label:22} {micro:5} {predicted / GB:9.3f}G {measured / GB:9.3f}G {err:+7.1%}")
    print(f"largest error {max(errors):.1%} over {len(errors)} shapes")


def choice(machine, presets: list[tuple[str, list[str], int]]) -> None:
    print()
    print("Micro-batch choice against brute force (tokens/s, median of steps 3-5, one process each):")
    for preset, overrides, vocab in presets:
        config = cfg.resolve(preset, overrides)
        picked = plan(config, machine, vocab_size=vocab)
        rows = []
        for micro in micro_batch_candidates(config.train.batch_size):
            c = dataclasses.replace(config, train=dataclasses.replace(config.train, micro_batch_size=micro))
            p = plan(c, machine, vocab_size=vocab)
            if p.predicted_peak_bytes > p.budget_bytes:
                continue
            r = measure(p, c, micro)
            if r["peak_bytes"] <= p.budget_bytes:
                rows.append((micro, r["tokens_per_s"], r["peak_bytes"]))
        best = max(rows, key=lambda r: r[1])
        mine = next(r for r in rows if r[0] == picked.micro_batch_size)
        sizes = ", ".join(f"{m}: {t:,.0f}" for m, t, _ in rows)
        print(f"{preset} {' '.join(overrides)} (batch {config.train.batch_size}, budget {picked.budget_bytes / GB:.1f}"
              f" GiB): tokens/s by micro-batch {sizes}")
        print(f"  planner picked {picked.micro_batch_size}: {mine[1]:,.0f} tok/s = {mine[1] / best[1]:.0%} of the"
              f" best ({best[0]}: {best[1]:,.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-choice", action="store_true")
    args = ap.parse_args()
    machine = probe(cache_dir=cache_root(cfg.DataConfig()))
    print(f"machine: {machine.cpu_model}, {machine.physical_cores} cores, {machine.ram_total_bytes / GB:.1f} GiB RAM,"
          f" GPUs: {[g.name for g in machine.gpus] or 'none'}")
    if not args.skip_accuracy:
        accuracy(machine)
    if not args.skip_choice:
        choice(machine, [
            ("tiny-shakespeare", [], 68),
            ("python-stdlib", [], 4096),
            ("python-stdlib", ["train.batch_size=32", "run.memory_budget=1.2GB"], 4096),
        ])


if __name__ == "__main__":
    main()
