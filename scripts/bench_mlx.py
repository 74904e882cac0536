"""MLX's compiled training step beside torch's on one device (`bench_train.py --device D --backend mlx`).

The same preset shape, random tokens and micro-batch (the first of --micro) for both:
torch's compiled step first, then MLX's `mx.compile`d step, each with its warm-up
(compilation included), the median step, tokens/s, MFU against the published and the
measured peak, and peak memory. Then MLX's step in its two parts, timed apart: the
gradients (forward and backward) and the AdamW update, so a gap to torch shows where
it is. Figures go to stdout and to the JSON file named by --out.
"""

from __future__ import annotations

import gc
import statistics
import time

from bench_step import GiB, Report, batches, published_peak


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def run(args) -> None:
    import mlx.core as mx
    import torch

    from localtrain import metrics
    from localtrain.backends.mlx_backend import MLXBackend
    from localtrain import hardware, planner
    from localtrain.backends.torch_backend import TorchBackend, resolve_device
    from localtrain.config import resolve
    from localtrain.planner import estimate_vocab

    report = Report(args.out)
    device = resolve_device(args.device)
    config = resolve(args.shape)
    m = config.model
    vocab = args.vocab or estimate_vocab(config)
    dtype = args.dtype if args.dtype != "auto" else planner.default_dtype(hardware.probe(), device)
    micro = args.micro[0]
    data = batches(vocab, micro, m.seq_len)
    name = torch.cuda.get_device_name() if device == "cuda" else device
    published = published_peak(name) if device == "cuda" else None
    report.line(f"device: {name}; torch {torch.__version__}; mlx {mx.__version__} on {mx.default_device()}")
    report.line(f"shape: {config.run.preset} ({m.n_layer} layers, {m.n_embd} wide, context {m.seq_len}, vocab {vocab}),"
                f" {dtype}, micro-batch {micro}, random tokens")
    report.data.update(device_name=name, dtype=dtype, shape=config.run.preset, micro=micro,
                       published_peak_flops=published, mlx=mx.__version__, torch=torch.__version__)
    rows = {}

    def timed(backend, label: str) -> dict:
        began = report.elapsed()
        start = time.perf_counter()
        for i in range(args.warmup):
            backend.train_step([data[i % len(data)]], 1e-4)
        warm = time.perf_counter() - start
        ms = _median_ms(lambda: backend.train_step([data[0]], 1e-4), args.steps)
        fpt = metrics.flops_per_token(m, -(-vocab // m.pad_vocab_multiple) * m.pad_vocab_multiple)
        tok_s = micro * m.seq_len / (ms / 1e3)
        row = {"ms": ms, "tok_s": tok_s, "warmup_s": warm, "flops_per_token": fpt,
               "mfu_published": fpt * tok_s / published if published else None}
        report.line(f"{label:16} {ms:8.1f} ms/step {tok_s:>11,.0f} tok/s"
                    + (f"  MFU {row['mfu_published']:5.1%} of published" if published else "")
                    + f"  warm-up ({args.warmup} steps) {warm:.1f} s")
        report.section(label, began)
        return row

    # Both compiled unless --variants eager asks for both eager (a quick check of the script).
    mode = "compiled" if "compiled" in args.variants else "eager"
    on = mode == "compiled"
    t = TorchBackend(device, dtype, 0, on, compile_mode=args.compile_mode)
    t.build(m, vocab, 0)
    t.configure_optimizer(config.train)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows["torch"] = timed(t, f"torch {mode}")
    if device == "cuda":
        rows["torch"]["peak_bytes"] = int(torch.cuda.max_memory_allocated())
    del t
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    b = MLXBackend(device, dtype if dtype != "float16" else "bfloat16", 0, on)
    b.build(m, vocab, 0)
    b.configure_optimizer(config.train)
    rows["mlx"] = timed(b, f"mlx {mode}")
    rows["mlx"]["peak_bytes"] = b.memory_bytes()
    if not m.dropout:
        xs, ys = (mx.array(a.astype("int32")) for a in data[0])
        scale = mx.array(1.0, dtype=mx.float32)

        def grads():
            mx.eval(b._grads(b.params, xs, ys, scale))

        _, g = b._grads(b.params, xs, ys, scale)
        h = {k: mx.array(v, dtype=mx.float32) for k, v in
             {"max_norm": 1.0, "decay": 1.0, "step_size": 1e-4, "bc2_sqrt": 1.0}.items()}

        def update():
            mx.eval(b._update(b.params, g, b.moments["exp_avg"], b.moments["exp_avg_sq"], h))

        split = {"grads_ms": _median_ms(grads, 5), "update_ms": _median_ms(update, 5)}
        rows["mlx"].update(split)
        report.line(f"{'':16} of which gradients (forward + backward) {split['grads_ms']:.1f} ms,"
                    f" AdamW update {split['update_ms']:.1f} ms")
    ratio = rows["mlx"]["tok_s"] / rows["torch"]["tok_s"]
    report.line()
    report.line(f"mlx / torch tokens/s at micro-batch {micro}: {ratio:.2f}x")
    for k in ("torch", "mlx"):
        if "peak_bytes" in rows[k]:
            report.line(f"  {k} peak memory {rows[k]['peak_bytes'] / GiB:.2f} GiB")
    report.data.update(rows=rows, ratio=ratio, mode=mode)
    report.line(f"total {report.elapsed():.0f} s")
    report.save()
