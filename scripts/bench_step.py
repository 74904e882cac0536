"""localtrain's training step beside the GPT-2 baseline on one device (`bench_train.py --device`).

For a preset's shape, on random tokens, one micro-batch a step: localtrain's step and the
GPT-2 baseline's (gpt2_baseline.py), compiled and eager, at the planner's micro-batch and
at the others asked for. Each row prints tokens/s and ms of the median step, MFU against
the bf16 (or training dtype) matmul peak measured at the start and against the card's
published dense bf16 peak, the warm-up time (compilation included), and on CUDA the peak
memory (torch.cuda.max_memory_allocated over the timed steps) beside the planner's
prediction and its terms. Every row is also written to the JSON file named by --out as
soon as it is measured, so a run stopped by its time budget keeps what it measured.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from gpt2_baseline import GPT2Baseline

GiB = 1024**3
# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity), by the
# name torch reports; the first match wins, so the specific names come first.
PUBLISHED_BF16_TFLOPS = [
    ("H100 PCIe", 756.5), ("H100 NVL", 835.5), ("H200 NVL", 835.5), ("GH200", 989.4), ("H100", 989.4),
    ("H200", 989.4), ("A100", 312.0), ("L40S", 362.1), ("RTX 4090", 165.2),
]


def flops_text(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def published_peak(name: str) -> float | None:
    for key, tflops in PUBLISHED_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


class Report:
    """Prints each line and keeps every measured figure for the JSON file, rewritten after each row."""

    def __init__(self, out: Path | None) -> None:
        self.out, self.start = out, time.perf_counter()
        self.data: dict = {"command": " ".join(sys.argv), "rows": [], "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def save(self) -> None:
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.data, indent=1, default=str))

    def section(self, name: str, began: float) -> None:
        took = self.elapsed() - began
        self.data["sections"][name] = round(took, 1)
        self.line(f"  [{name}: {took:.1f} s; {self.elapsed():.0f} s since start]")
        self.save()


def batches(vocab: int, micro: int, seq_len: int, count: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(micro)
    out = []
    for _ in range(count):
        data = rng.integers(0, vocab, (micro, seq_len + 1)).astype(np.int64)
        out.append((data[:, :-1], data[:, 1:]))
    return out


def predicted_memory(config, vocab: int, micro: int, dtype: str, device: str, compiled: bool) -> dict:
    """The planner's predicted peak, the part of it the allocator counts, and its terms."""
    from localtrain import memory

    est = memory.memory_estimate(config.model, vocab, micro, dtype, device, compiled=compiled)
    return {"predicted_bytes": est.total, "predicted_tensors": est.tensors, "terms": dict(est.terms)}


def planner_micro(config, machine, vocab: int) -> int | None:
    """The micro-batch the planner picks before anything is measured (the largest that fits)."""
    try:
        from localtrain import planner

        return planner.plan(config, machine, vocab_size=vocab).micro_batch_size
    except Exception as exc:  # the comparison still runs at the micro-batches asked for
        print(f"(the planner could not plan this shape here: {exc})")
        return None


class Contestant:
    """One model (localtrain or the GPT-2 baseline) in one mode, stepped on one device."""

    def __init__(self, which: str, compiled: bool, config, vocab: int, device: str, dtype: str,
                 compile_mode: str | None) -> None:
        self.which, self.compiled = which, compiled
        m = config.model
        if which == "localtrain":
            from localtrain import metrics
            from localtrain.backends.torch_backend import TorchBackend

            self.b = TorchBackend(device, dtype, 0, compiled, compile_mode=compile_mode)
            self.b.build(m, vocab, 0)
            self.b.configure_optimizer(config.train)
            self.flops_per_token = metrics.flops_per_token(m, self.b.model.model.embed_tokens.num_embeddings)
            self.params = self.b.num_params()
        else:
            rows = -(-vocab // m.pad_vocab_multiple) * m.pad_vocab_multiple
            self.b = GPT2Baseline(rows, m.n_layer, m.n_head, m.n_embd, m.seq_len, device, dtype, compiled,
                                  compile_mode)
            self.flops_per_token, self.params = self.b.flops_per_token, self.b.params

    def step(self, micro_batches) -> None:
        if self.which == "localtrain":
            self.b.train_step(micro_batches, 1e-4)
        else:
            self.b.train_step(micro_batches)

    def close(self) -> None:
        self.b = None


def is_oom(exc: BaseException) -> bool:
    from localtrain.backends.base import OutOfMemory, is_out_of_memory

    return isinstance(exc, OutOfMemory) or is_out_of_memory(exc)


def split_for(micro: int, most: int) -> int:
    """The fewest equal pieces, each of at most `most` sequences, that `micro` divides into."""
    return next(n for n in range(1, micro + 1) if micro % n == 0 and micro // n <= most)


def measure_row(c: Contestant, data, warmup: int, steps: int, device: str, accum: int = 1,
                row_s: float = 8.0) -> dict:
    """Warm up (compiling), then time the steps; splits the micro-batch in two on an OOM.

    `accum`: the pieces the micro-batch starts split into. Past the first two warm-up steps,
    the row spends about `row_s` seconds on steps, at most `warmup` warm-up and `steps` timed
    ones (at least 2 and 5 where those allow): a step of a large micro-batch takes a second or more.
    """
    import torch

    while True:
        size = len(data[0][0]) // accum
        feed = [[(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(accum)] for x, y in data]
        try:
            start = time.perf_counter()
            c.step(feed[0])  # compiles
            t = time.perf_counter()
            c.step(feed[1 % len(feed)])
            one = time.perf_counter() - t
            for i in range(2, max(2, min(warmup, 2 + int(row_s / 4 / one)))):
                c.step(feed[i % len(feed)])
            warm = time.perf_counter() - start
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for i in range(min(steps, max(5, int(row_s / one)))):
                t = time.perf_counter()
                c.step(feed[i % len(feed)])  # each step ends by reading its loss: the device has finished
                times.append(time.perf_counter() - t)
            break
        except Exception as exc:
            if not is_oom(exc) or size < 2:
                raise
            if c.which == "localtrain":
                c.b.optimizer.zero_grad(set_to_none=True)
            else:
                c.b.opt.zero_grad(set_to_none=True)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            accum = split_for(len(data[0][0]), size // 2)
    median = statistics.median(times)
    tokens = len(data[0][0]) * data[0][0].shape[1]
    row = {"model": c.which, "mode": "compiled" if c.compiled else "eager", "micro": len(data[0][0]),
           "accum": accum, "steps": len(times), "ms": median * 1e3, "tok_s": tokens / median, "warmup_s": warm,
           "flops_per_token": c.flops_per_token, "params": c.params}
    if device == "cuda":
        row["peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return row


def profile_step(c: Contestant, data, device: str, report: Report, rows: int = 14) -> dict:
    """Kernel (on a CPU: operator) time of two steps, by name and by kind (matmul, attention, ...)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for i in range(2):
            c.step([data[i % len(data)]])
        if cuda:
            torch.cuda.synchronize()
    kernels = []
    for e in prof.key_averages():
        if cuda:
            us = getattr(e, "self_device_time_total", None)
            us = getattr(e, "self_cuda_time_total", 0.0) if us is None else us
        else:
            us = e.self_cpu_time_total
        if us > 0:
            kernels.append((e.key, us / 2, e.count // 2))
    total = sum(us for _, us, _ in kernels) or 1.0
    kinds: dict[str, float] = {}
    for name, us, _ in kernels:
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + us
    report.line(f"  {'kernel' if cuda else 'operator'} time per step {total / 1e3:.1f} ms: " + ", ".join(
        f"{k} {v / total:.0%}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    top = sorted(kernels, key=lambda k: -k[1])
    for name, us, count in top[:rows]:
        report.line(f"    {us / 1e3:7.2f} ms {us / total:6.1%} x{count:<4} {name[:90]}")
    return {"total_ms": total / 1e3, "kinds_ms": {k: v / 1e3 for k, v in kinds.items()},
            "top": [(n[:160], us / 1e3, cnt) for n, us, cnt in top[:40]]}


def kernel_kind(name: str) -> str:
    """Which part of the step a kernel (or operator) name belongs to."""
    low = name.lower()
    if any(k in low for k in ("flash", "fmha", "cudnn", "attention", "sdpa")):
        return "attention"
    if any(k in low for k in ("gemm", "xmma", "nvjet", "cutlass", "sm90", "matmul", "aten::mm", "addmm", "bmm")):
        return "matmul"
    if any(k in low for k in ("adam", "multi_tensor", "foreach", "clip_grad")):
        return "optimizer"
    if low.startswith("triton"):
        return "fused (triton)"
    return "other"


def fit(points: list[tuple[int, int]]) -> tuple[float, float] | None:
    """Least-squares fixed + per-sample bytes through (micro-batch, peak) points."""
    if len(points) < 2:
        return None
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def _header(report: Report, device: str, dtype: str, config, vocab: int) -> tuple[float, float | None]:
    import torch

    from localtrain.backends.torch_backend import TorchBackend

    m = config.model
    if device == "cuda":
        name = torch.cuda.get_device_name()
        props = torch.cuda.get_device_properties(0)
        where = (f"{name}, {props.total_memory / GiB:.1f} GiB, {props.multi_processor_count} SMs; torch "
                 f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        import os

        name = "cpu"
        where = f"CPU, {os.cpu_count()} logical cores, {torch.get_num_threads()} threads; torch {torch.__version__}"
    began = report.elapsed()
    peak = TorchBackend(device, dtype).measure_peak_flops()
    published = published_peak(name) if device == "cuda" else None
    report.line(f"device: {where}")
    report.line(f"shape: {config.run.preset} ({m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, context "
                f"{m.seq_len}, vocab {vocab}), {dtype}, random tokens, one micro-batch a step")
    report.line(f"{dtype} matmul peak measured now: {flops_text(peak)}; published dense bf16 peak: "
                + (flops_text(published) if published else "unknown for this device"))
    report.data.update(device=where, device_name=name, dtype=dtype, shape=config.run.preset, vocab=vocab,
                       measured_peak_flops=peak, published_peak_flops=published)
    report.section("peak", began)
    return peak, published


def _describe(row: dict, peak: float, published: float | None) -> str:
    text = (f"{row['model']:10} {row['mode']:8} micro {row['micro']:>3}"
            + (f" (as {row['accum']} x {row['micro'] // row['accum']})" if row["accum"] > 1 else "")
            + f": {row['ms']:8.1f} ms/step {row['tok_s']:>11,.0f} tok/s  MFU {row['mfu_measured']:5.1%} of measured"
            + (f", {row['mfu_published']:5.1%} of published" if published else "")
            + f"  warm-up {row['warmup_s']:.1f} s")
    if "peak_bytes" in row:
        text += f"\n{'':30}peak {row['peak_bytes'] / GiB:.2f} GiB"
        if "predicted_bytes" in row:
            text += (f", planner {row['predicted_tensors'] / GiB:.2f} GiB of tensors ({row['memory_error']:+.1%};"
                     f" {row['predicted_bytes'] / GiB:.2f} GiB with the context and the compiler's code)")
    if row.get("attention"):
        a = row["attention"]
        text += f"\n{'':30}attention kernels (fwd+bwd): " + ", ".join(f"{k} {v:.2f} ms" for k, v in a["ms"].items())
        text += f"; chosen {a['order'][0] if a['order'] else 'default'}"
    return text


def run(args) -> None:
    """Compare localtrain's step with the GPT-2 baseline's on args.device (see the module docstring)."""
    import torch

    from localtrain.backends.torch_backend import resolve_device
    from localtrain import hardware, planner
    from localtrain.config import resolve
    from localtrain.planner import estimate_vocab

    for knob in ("cache_size_limit", "recompile_limit"):  # one static recompile per micro-batch
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    report = Report(args.out)
    device = resolve_device(args.device)
    config = resolve(args.shape)
    vocab = args.vocab or estimate_vocab(config)
    machine = hardware.probe()
    dtype = args.dtype if args.dtype != "auto" else planner.default_dtype(machine, device)
    peak, published = _header(report, device, dtype, config, vocab)
    began = report.elapsed()
    planned = planner_micro(config, machine, vocab) if args.plan else None
    micros = list(dict.fromkeys(([planned] if planned else []) + list(args.micro)))
    report.line(f"micro-batches: {micros}" + (f" (the planner picks {planned} here)" if planned else ""))
    report.data.update(planner_micro=planned, micros=micros)
    report.section("plan", began)
    modes = [m for m in ("compiled", "eager") if m in args.variants]
    for mode in modes:
        for which in args.models:
            began = report.elapsed()
            if report.elapsed() > args.budget_s:
                report.line(f"{which} {mode}: skipped (time budget of {args.budget_s:.0f} s spent)")
                continue
            c = Contestant(which, mode == "compiled", config, vocab, device, dtype, args.compile_mode)
            for micro in micros:
                if report.elapsed() > args.budget_s:
                    report.line(f"{which} {mode} micro {micro}: skipped (time budget of {args.budget_s:.0f} s spent)")
                    continue
                data = batches(vocab, micro, config.model.seq_len)
                # The baseline's full float32 logits fit no large micro-batch: it accumulates pieces
                # of at most the largest micro-batch asked for, as nanoGPT's recipe does.
                accum = split_for(micro, max(args.micro)) if which == "gpt2" else 1
                try:
                    row = measure_row(c, data, args.warmup, args.steps, device, accum, args.row_s)
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    report.line(f"{which} {mode} micro {micro}: out of memory even at micro-batch 1")
                    continue
                row["mfu_measured"] = row["flops_per_token"] * row["tok_s"] / peak
                row["mfu_published"] = row["flops_per_token"] * row["tok_s"] / published if published else None
                if which == "localtrain":
                    row.update(predicted_memory(config, vocab, micro // row["accum"], dtype, device,
                                                mode == "compiled"))
                    if "peak_bytes" in row:
                        row["memory_error"] = row["predicted_tensors"] / row["peak_bytes"] - 1
                    choice = c.b.attention.get((micro // row["accum"], dtype))
                    if choice is not None:
                        row["attention"] = {"order": choice.order, "ms": choice.ms, "refused": choice.refused}
                report.data["rows"].append(row)
                report.line(_describe(row, peak, published))
                report.save()
                if args.profile and micro == micros[0] and mode == modes[0] and row["accum"] == 1:
                    row["profile"] = profile_step(c, data, device, report)
                    report.save()
            c.close()
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            report.section(f"{which} {mode}", began)
    _summary(report)


def _summary(report: Report) -> None:
    rows = report.data["rows"]
    by = {(r["model"], r["mode"], r["micro"]): r for r in rows}
    report.line()
    report.line(f"{'mode':9} {'micro':>5} {'localtrain tok/s':>17} {'GPT-2 tok/s':>12} {'ratio':>6}"
                f" {'MFU (meas.)':>11} {'MFU (publ.)':>11} {'GPT-2 MFU (publ.)':>17}")
    ratios = []
    for (model, mode, micro), r in by.items():
        if model != "localtrain":
            continue
        g = by.get(("gpt2", mode, micro))
        ratio = r["tok_s"] / g["tok_s"] if g else None
        ratios.append({"mode": mode, "micro": micro, "ratio": ratio})
        pub = lambda x: f"{x['mfu_published']:.1%}" if x and x.get("mfu_published") else "-"  # noqa: E731
        theirs, times = (f"{g['tok_s']:,.0f}", f"{ratio:.2f}x") if g else ("-", "-")  # the baseline not run
        report.line(f"{mode:9} {micro:5} {r['tok_s']:17,.0f} {theirs:>12} {times:>6}"
                    f" {r['mfu_measured']:11.1%} {pub(r):>11} {pub(g):>17}")
    report.data["ratios"] = ratios
    mem = [r for r in rows if r["model"] == "localtrain" and "peak_bytes" in r]
    if mem:
        report.line()
        report.line("memory of localtrain's step: torch.cuda.max_memory_allocated against the planner's"
                    " tensors (its terms but the CUDA context and the compiler's code, which the allocator"
                    " does not count)")
        for mode in ("compiled", "eager"):
            points = [(r["micro"], r["peak_bytes"]) for r in mem if r["mode"] == mode and r["accum"] == 1]
            for r in (r for r in mem if r["mode"] == mode):
                report.line(f"  {mode:8} micro {r['micro']:>3}: measured {r['peak_bytes'] / GiB:6.2f} GiB,"
                            f" predicted {r['predicted_tensors'] / GiB:6.2f} GiB"
                            f" ({r['memory_error']:+.1%})")
            measured_fit = fit(points)
            if measured_fit:
                # The planner's figures through the same micro-batches (its loss term is not linear
                # below one chunk of the chunked loss).
                whole = [r for r in mem if r["mode"] == mode and r["accum"] == 1]
                planner_fit = fit([(r["micro"], r["predicted_tensors"]) for r in whole])
                report.line(f"  {mode:8} fit: {measured_fit[0] / GiB:.2f} GiB + {measured_fit[1] / 2**20:.1f} MiB"
                            f" per sequence; planner: {planner_fit[0] / GiB:.2f} GiB + {planner_fit[1] / 2**20:.1f}"
                            " MiB per sequence")
                report.data.setdefault("memory_fit", {})[mode] = {
                    "fixed": measured_fit[0], "per_sample": measured_fit[1],
                    "planner_fixed": planner_fit[0], "planner_per_sample": planner_fit[1]}
            terms = next((r["terms"] for r in mem if r["mode"] == mode), None)
            if terms:
                report.line(f"  {mode:8} planner terms at micro {next(r['micro'] for r in mem if r['mode'] == mode)}: "
                            + ", ".join(f"{k} {v / GiB:.2f}" for k, v in terms.items()) + " GiB")
    report.line(f"total {report.elapsed():.0f} s")
    report.save()

