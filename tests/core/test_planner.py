"""The memory model, backend/dtype choice, micro-batch fitting, disk checks, OOM back-off."""

from __future__ import annotations

import dataclasses

import pytest

from localtrain import config as cfg
from localtrain.errors import LocaltrainError
from localtrain.hardware import GPU, Machine
from localtrain.memory import GB, memory_estimate
from localtrain.plan import Choice, Measured, Tuned
from localtrain.batch import micro_batch_candidates, next_smaller_micro
from localtrain.planner import candidates, check_plan, pick, plan
from localtrain.files import parse_size

MB = 1024**2


def machine(**kw) -> Machine:
    """Facts of a machine, as probe() would report them."""
    base = dict(
        os="Linux", arch="x86_64", python="3.11", cpu_model="test cpu", physical_cores=8, logical_cores=8,
        cpu_flags=["avx2"], cpu_native_bf16=False, ram_total_bytes=32 * GB, ram_available_bytes=30 * GB,
        disk={"runs": {"free": 500 * GB, "total": 1000 * GB, "device": 1},
              "cache": {"free": 500 * GB, "total": 1000 * GB, "device": 1}},
        backends={"torch": "2.13.0"},
    )
    base.update(kw)
    return Machine(**base)


def test_memory_terms_are_named_and_scale_with_the_micro_batch() -> None:
    m = cfg.resolve("wikitext-103").model
    one = memory_estimate(m, 32000, 1, "float32", "cpu")
    four = memory_estimate(m, 32000, 4, "float32", "cpu")
    assert set(one.terms) == {"weights", "weight_casts", "gradients", "optimizer", "activations", "logits",
                              "compiler", "overhead"}
    assert one.terms["compiler"] == 0
    assert one.terms["optimizer"] == 2 * one.terms["weights"] == 2 * one.terms["gradients"]
    assert four.total - one.total == 3 * one.per_sample
    assert four.terms["logits"] == 4 * one.terms["logits"]
    # The logits grow with the vocabulary; checkpointing shrinks only the activations.
    assert memory_estimate(m, 64000, 4, "float32", "cpu").terms["logits"] > four.terms["logits"]
    ckpt = memory_estimate(m, 32000, 4, "float32", "cpu", checkpointing=True)
    assert ckpt.terms["activations"] < four.terms["activations"] / 3
    assert ckpt.terms["logits"] == four.terms["logits"]
    # Mixed precision keeps fp32 masters (and a 16-bit copy) but halves most activations.
    mixed = memory_estimate(m, 32000, 4, "bfloat16", "cuda")
    assert mixed.terms["weights"] == four.terms["weights"] and mixed.terms["weight_casts"] > 0
    assert mixed.terms["activations"] < four.terms["activations"]
    # A compiled step saves fewer intermediates, and the compiler holds memory of its own.
    compiled = memory_estimate(m, 32000, 4, "float32", "cpu", compiled=True)
    assert compiled.terms["activations"] < four.terms["activations"]
    assert compiled.terms["logits"] < four.terms["logits"]  # the compiled loss works in the logits' buffers
    assert memory_estimate(m, 32000, 4, "bfloat16", "cuda", compiled=True).terms["compiler"] > 0
    # The math attention path keeps T x T scores per head.
    assert memory_estimate(m, 32000, 4, "float32", "mps", fused_attention=False).terms["activations"] > \
        four.terms["activations"]


def test_backend_and_device_choice() -> None:
    config = cfg.resolve("tiny-shakespeare")
    assert plan(config, machine()).backend == "torch" and plan(config, machine()).device == "cpu"
    cuda = machine(gpus=[GPU(0, "RTX 4090", 24 * GB, 23 * GB, "8.9", True)])
    p = plan(config, cuda)
    assert (p.backend, p.device, p.dtype) == ("torch", "cuda", "bfloat16")
    older = machine(gpus=[GPU(0, "T4", 16 * GB, 15 * GB, "7.5", False)])
    assert plan(config, older).dtype == "float16"
    mac = dict(os="Darwin", arch="arm64", apple_silicon=True, chip="Apple M3 Pro", mps_available=True,
               mps_recommended_max_bytes=24 * GB, mlx_max_recommended_working_set_bytes=26 * GB)
    p = plan(config, machine(**mac, backends={"torch": "2.13", "mlx": "0.32"}))
    assert (p.backend, p.device, p.dtype) == ("mlx", "mlx", "bfloat16")
    assert p.budget_bytes == 26 * GB
    p = plan(config, machine(**mac))
    assert (p.backend, p.device) == ("torch", "mps") and p.budget_bytes == 24 * GB
    # MLX installed on Linux is never picked by itself.
    assert plan(config, machine(backends={"torch": "2.13", "mlx": "0.32"})).backend == "torch"
    explicit = cfg.resolve("tiny-shakespeare", ["run.backend=mlx"])
    assert plan(explicit, machine(backends={"torch": "2.13", "mlx": "0.32"})).backend == "mlx"
    assert plan(cfg.resolve("tiny-shakespeare", ["run.device=cpu"]), cuda).device == "cpu"


def test_no_rule_reads_the_cpu_flags_the_tuner_times_both_dtypes() -> None:
    config = cfg.resolve("tiny-shakespeare")
    bf16_cpu = machine(cpu_flags=["avx512_bf16", "amx_bf16"], cpu_native_bf16=True)
    for m in (machine(), bf16_cpu):
        p = plan(config, m)
        # Unmeasured, every CPU trains in float32; bfloat16 is a candidate on both, for timing to decide.
        assert (p.dtype, p.decided_by) == ("float32", "defaults")
        assert {c.dtype for c in candidates(config, m, 68)} == {"float32", "bfloat16"}
        assert {c.compile for c in candidates(config, m, 68)} == {False, True}
    assert plan(cfg.resolve("tiny-shakespeare", ["train.dtype=float16"]), machine()).dtype == "float16"
    only = candidates(cfg.resolve("tiny-shakespeare", ["train.dtype=bfloat16", "run.compile=off"]), machine(), 68)
    assert {(c.dtype, c.compile) for c in only} == {("bfloat16", False)}


def test_micro_batch_candidates_are_the_largest_that_fits_and_about_a_half_and_a_quarter_of_it() -> None:
    roomy = candidates(cfg.resolve("wikitext-103", ["train.dtype=float32", "run.compile=off"]), machine(), 32000)
    assert [c.micro_batch_size for c in roomy] == [32, 16, 8]
    tight = cfg.resolve("wikitext-103", ["train.dtype=float32", "run.compile=off", "run.memory_budget=3GB"])
    sizes = [c.micro_batch_size for c in candidates(tight, machine(), 32000)]
    largest = max(m for m in micro_batch_candidates(32)
                  if memory_estimate(tight.model, 32000, m, "float32", "cpu").total <= 0.9 * 3 * GB)
    assert sizes == [largest, largest // 2, largest // 4] and largest < 32
    set_by_user = cfg.resolve("wikitext-103", ["train.micro_batch_size=4", "run.compile=off", "train.dtype=float32"])
    assert [c.micro_batch_size for c in candidates(set_by_user, machine(), 32000)] == [4]
    # A batch of a prime number of sequences has only itself and 1 to offer.
    assert [c.micro_batch_size for c in candidates(cfg.resolve(
        "tiny-shakespeare", ["train.batch_size=13", "train.dtype=float32", "run.compile=off"]), machine(), 68)] == [13, 1]


def measured(dtype: str, compile_: bool, micro: int, step_s: float, peak_gib: float, warmup_s: float = 0.0,
             status: str = "ok") -> Measured:
    return Measured(Choice(dtype, compile_, micro), status, step_s, int(peak_gib * GB), warmup_s)


def test_the_pick_is_the_least_predicted_wall_time_of_the_whole_run() -> None:
    eager = measured("float32", False, 12, step_s=0.033, peak_gib=0.40)
    compiled = measured("float32", True, 12, step_s=0.026, peak_gib=0.38, warmup_s=3.0)
    bf16 = measured("bfloat16", False, 12, step_s=0.041, peak_gib=0.39)
    # Compiling costs 3 s: over 100 steps it saves 0.7 s, over 2,000 it saves 14 s.
    assert pick([eager, compiled, bf16], 100)[0] is eager
    best, why = pick([eager, compiled, bf16], 2000)
    assert best is compiled and "2000 steps at 26.0 ms after 3.0 s of warm-up" in why
    # Within 3% of the fastest, the one that needs less memory wins.
    lean = measured("float32", False, 6, step_s=0.0335, peak_gib=0.30)
    best, why = pick([eager, lean], 1000)
    assert best is lean and "with less memory" in why
    assert pick([eager, measured("float32", False, 6, step_s=0.036, peak_gib=0.30)], 1000)[0] is eager
    # What failed or stopped early is never picked; when nothing could be measured, the error says what to do.
    assert pick([measured("float32", True, 12, 0.001, 0.1, status="crashed"), eager], 10)[0] is eager
    # A measured peak over the budget is not eligible: over 100 steps eager would win, but needs 0.40 GiB.
    assert pick([compiled, eager], 100, usable=int(0.39 * GB))[0] is compiled
    with pytest.raises(LocaltrainError, match="run.autotune=off"):
        pick([measured("float32", False, 12, 0.0, 0.0, status="oom")], 10)


def test_precedence_explicit_then_resumed_then_measured_then_defaults() -> None:
    config = cfg.resolve("tiny-shakespeare")
    m = machine()
    tuned = Tuned((measured("bfloat16", True, 6, 0.02, 0.3, warmup_s=1.0), measured("float32", False, 12, 0.05, 0.4)))
    p = plan(config, m, 68, tuned=tuned)
    assert (p.dtype, p.compile, p.micro_batch_size, p.grad_accum_steps, p.decided_by) == ("bfloat16", True, 6, 2,
                                                                                        "measured")
    assert p.predicted_tokens_per_s == pytest.approx(12 * 64 / 0.02)
    assert p.predicted_peak_bytes == int(0.3 * GB)  # the measured peak of the chosen candidate
    assert [c["chosen"] for c in p.candidates] == [True, False]
    resumed = {"backend": "torch", "dtype": "float32", "compile": False, "micro_batch_size": 4}
    p = plan(config, m, 68, tuned=tuned, resumed=resumed)
    assert (p.dtype, p.compile, p.micro_batch_size, p.decided_by) == ("float32", False, 4, "resumed")
    p = plan(cfg.resolve("tiny-shakespeare", ["train.dtype=bfloat16"]), m, 68, resumed=resumed)
    assert (p.dtype, p.compile, p.micro_batch_size) == ("bfloat16", False, 4) and "set by you" in p.why
    p = plan(cfg.resolve("tiny-shakespeare", ["train.micro_batch_size=3", "run.compile=on"]), m, 68, tuned=tuned)
    assert (p.dtype, p.compile, p.micro_batch_size) == ("bfloat16", True, 3)
    # A resumed run moved to MLX compiles as MLX does; one on a new world size re-fits the micro-batch.
    p = plan(cfg.resolve("tiny-shakespeare", ["run.backend=mlx"]), m, 68, resumed=resumed)
    assert p.compile
    p = plan(config, m, 68, resumed={**resumed, "micro_batch_size": 12}, world_size=2)
    assert p.micro_batch_size == 6 and p.grad_accum_steps == 1


def test_a_peak_measured_on_cuda_counts_what_its_allocator_leaves_out() -> None:
    # On CUDA the tuner measures the allocator's tensors (max_memory_allocated); the CUDA context and
    # the compiled code come on top. The plan's peak, and whether a candidate fits, are the whole.
    config = cfg.resolve("tiny-shakespeare", ["run.memory_budget=2GB"])
    cuda = machine(gpus=[GPU(0, "RTX 4090", 24 * GB, 23 * GB, "8.9", True)])
    left_out = {c: memory_estimate(config.model, 68, 12, "bfloat16", "cuda", compiled=c) for c in (False, True)}
    left_out = {c: e.total - e.tensors for c, e in left_out.items()}
    assert left_out[False] > 0 and left_out[True] > left_out[False]  # the context; with it the compiled code
    usable = plan(config, cuda, 68).budget_bytes * 0.9
    eager = Measured(Choice("bfloat16", False, 12), "ok", 0.03, int(usable - left_out[False] - MB), 0.0)
    p = plan(config, cuda, 68, tuned=Tuned((eager,)))
    assert p.predicted_peak_bytes == eager.peak_bytes + left_out[False] <= usable
    assert p.candidates[0]["whole_peak_bytes"] == p.predicted_peak_bytes and p.fits
    # Faster, and its tensors alone would fit; with what the allocator does not count, it does not.
    compiled = Measured(Choice("bfloat16", True, 12), "ok", 0.02, int(usable - left_out[True] / 2), 1.0)
    p = plan(config, cuda, 68, tuned=Tuned((compiled, eager)))
    assert compiled.peak_bytes < usable < compiled.peak_bytes + left_out[True]
    assert (p.compile, [c["chosen"] for c in p.candidates]) == (False, [False, True])
    # Within 3% the one that needs less memory wins, counted the same way: the compiled one's
    # tensors are fewer, but with its code it needs more.
    small = Measured(Choice("bfloat16", False, 12), "ok", 0.03, int(0.5 * GB), 0.0)
    lean = Measured(Choice("bfloat16", True, 12), "ok", 0.03, small.peak_bytes - MB, 0.0)
    assert small.peak_bytes + left_out[False] < lean.peak_bytes + left_out[True] <= usable
    p = plan(config, cuda, 68, tuned=Tuned((lean, small)))
    assert not p.compile and "with less memory" in p.why
    # Elsewhere the measurement is the process's resident peak: nothing is added.
    cpu = plan(config, machine(), 68, tuned=Tuned((eager,)))
    assert cpu.predicted_peak_bytes == eager.peak_bytes == cpu.candidates[0]["whole_peak_bytes"]


def test_live_samples_decode_in_the_dtype_timed_fastest_a_token() -> None:
    config = cfg.resolve("tiny-shakespeare")
    bf16 = dataclasses.replace(measured("bfloat16", True, 12, 0.02, 0.3), decode_s=0.003)
    fp32 = dataclasses.replace(measured("float32", False, 12, 0.05, 0.4), decode_s=0.0013)
    p = plan(config, machine(), 68, tuned=Tuned((bf16, fp32)))
    assert p.dtype == "bfloat16" and p.sample_dtype == "float32"
    assert "live samples decode in float32: 1.3 ms a token against 3.0 ms in bfloat16" in p.why
    # Within 3%, timed in one dtype only, or not timed: the training dtype ("").
    close = dataclasses.replace(fp32, decode_s=0.00295)
    assert plan(config, machine(), 68, tuned=Tuned((bf16, close))).sample_dtype == ""
    assert plan(config, machine(), 68, tuned=Tuned((bf16,))).sample_dtype == ""
    untimed = dataclasses.replace(bf16, decode_s=0.0)
    assert plan(config, machine(), 68, tuned=Tuned((untimed, fp32))).sample_dtype == ""
    # Where float32 trains fastest, a slower 16-bit decode is not taken either.
    slow = dataclasses.replace(measured("bfloat16", False, 12, 0.09, 0.3), decode_s=0.003)
    assert plan(config, machine(), 68, tuned=Tuned((slow, fp32))).sample_dtype == ""
    # A resumed run keeps the dtype its checkpoint records (none: the training dtype), whatever was timed.
    resumed = {"backend": "torch", "dtype": "bfloat16", "compile": True, "micro_batch_size": 12}
    assert plan(config, machine(), 68, tuned=Tuned((bf16, fp32)), resumed=resumed).sample_dtype == ""
    assert plan(config, machine(), 68, resumed={**resumed, "sample_dtype": "float32"}).sample_dtype == "float32"


def test_the_largest_micro_batch_that_fits_is_chosen() -> None:
    config = cfg.resolve("wikitext-103")  # batch 32
    roomy = plan(config, machine())
    assert roomy.micro_batch_size == 32 and roomy.grad_accum_steps == 1 and roomy.fits
    tight = plan(cfg.resolve("wikitext-103", ["run.memory_budget=3GB"]), machine())
    assert tight.micro_batch_size < 32 and tight.micro_batch_size * tight.grad_accum_steps == 32
    assert tight.predicted_peak_bytes <= 0.9 * 3 * GB < memory_estimate(
        config.model, 32000, next(m for m in micro_batch_candidates(32) if m > tight.micro_batch_size),
        "float32", "cpu").total
    assert not tight.activation_checkpointing
    # A budget between one sequence with and without checkpointing: only checkpointing fits.
    lean = memory_estimate(config.model, 32000, 1, "float32", "cpu", checkpointing=True).total
    full = memory_estimate(config.model, 32000, 1, "float32", "cpu").total
    squeezed = plan(cfg.resolve("wikitext-103", [f"run.memory_budget={int((lean + full) / 2 / 0.9)}"]), machine(),
                    vocab_size=32000)
    assert squeezed.activation_checkpointing and squeezed.fits and squeezed.micro_batch_size == 1


def test_a_model_that_cannot_fit_is_refused_with_numbers() -> None:
    p = plan(cfg.resolve("gpt2-124m", ["run.memory_budget=500MB"]), machine())
    with pytest.raises(LocaltrainError) as info:
        check_plan(p, machine())
    text = str(info.value)
    assert "does not fit" in text and "0.49 GiB" in text and "run.memory_budget = 500MB" in text


def test_disk_that_cannot_hold_data_and_checkpoints_is_refused() -> None:
    small = machine(disk={"runs": {"free": 2 * GB, "total": 10 * GB, "device": 1},
                          "cache": {"free": 2 * GB, "total": 10 * GB, "device": 1}})
    p = plan(cfg.resolve("wikitext-103"), small)
    with pytest.raises(LocaltrainError) as info:
        check_plan(p, small)
    text = str(info.value)
    assert "Not enough disk" in text and "has 2.0 GiB free" in text and "Nothing was downloaded" in text
    check_plan(plan(cfg.resolve("tiny-shakespeare"), small), small)


def test_the_token_budget_defaults_to_20_tokens_per_parameter() -> None:
    p = plan(cfg.resolve("python-stdlib", ["train.max_steps=0"]), machine(), vocab_size=4096)
    assert p.total_tokens >= 20 * p.params > p.total_tokens - p.tokens_per_step
    assert p.total_steps == p.total_tokens // p.tokens_per_step
    # Unmeasured, no speed is claimed; measured, the time is the tokens at the measured rate.
    assert p.predicted_tokens_per_s == 0 and p.predicted_seconds == float("inf")
    timed = plan(cfg.resolve("python-stdlib"), machine(), vocab_size=4096,
                 tuned=Tuned((measured("float32", False, 8, step_s=0.5, peak_gib=0.6),)))
    assert timed.predicted_tokens_per_s == pytest.approx(8 * 256 / 0.5)
    assert timed.predicted_seconds == pytest.approx(timed.total_tokens / timed.predicted_tokens_per_s)


def test_sizes_and_back_off_steps() -> None:
    assert parse_size("6GB") == 6 * GB and parse_size("512 MiB") == 512 * MB and parse_size("1.5g") == int(1.5 * GB)
    with pytest.raises(ValueError):
        parse_size("lots")
    assert micro_batch_candidates(12) == [12, 6, 4, 3, 2, 1]
    # Divisors are found up to the square root: a huge batch answers at once.
    assert micro_batch_candidates(10**12)[:3] == [10**12, 5 * 10**11, 25 * 10**10]
    assert [next_smaller_micro(12, m) for m in (12, 6, 3, 1)] == [6, 3, 1, None]


def test_a_run_whose_disk_need_exceeds_free_space_fails_before_writing(tmp_path, monkeypatch, capsys) -> None:
    from localtrain.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["run", "--set", "train.keep_checkpoints=10000000"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Not enough disk" in err and "GiB free" in err
    assert not (tmp_path / "runs").exists()


def test_on_cuda_the_logits_term_is_one_chunk_of_the_chunked_loss() -> None:
    m = cfg.resolve("gpt2-124m").model  # 50304 rows, 768 wide: chunks of 8192 tokens
    small, large = (memory_estimate(m, 50257, mb, "bfloat16", "cuda") for mb in (32, 64))
    # Past one chunk, more tokens add only the hidden states' float32 gradient (4 bytes x 768).
    assert large.terms["logits"] - small.terms["logits"] == 32 * 1024 * 4 * 768
    assert large.total - small.total == 32 * small.per_sample
    # The CPU keeps the full logits: they grow with every token, by a whole vocabulary row.
    cpu = [memory_estimate(m, 50257, mb, "bfloat16", "cpu").terms["logits"] for mb in (32, 64)]
    assert cpu[1] == 2 * cpu[0] and cpu[1] - cpu[0] > 20 * (large.terms["logits"] - small.terms["logits"])
    # Within one chunk every token adds a vocabulary row: 6 bytes a logit eager under autocast
    # (float32 beside the 16-bit gradient).
    two, four = (memory_estimate(m, 50257, mb, "bfloat16", "cuda").terms["logits"] for mb in (2, 4))
    assert four - two == 2 * 1024 * (6 * 50304 + 4 * 768)
    # A compiled step keeps every token's logits, as measured on a GPU: 3.4 bytes a logit, past
    # one chunk too.
    compiled = [memory_estimate(m, 50257, mb, "bfloat16", "cuda", compiled=True).terms["logits"] for mb in (32, 64)]
    assert abs(compiled[1] - compiled[0] - 32 * 1024 * (3.4 * 50304 + 4 * 768)) < 1024


# Peaks measured on NVIDIA GPUs (torch.cuda.max_memory_allocated, GiB; torch 2.11, bf16 unless
# said, context 1024, 768 wide): (layers, vocabulary, dtype, compiled, micro-batch, measured).
# The H100's: scripts/bench_planner.py --device cuda (each in a process of its own) and
# scripts/bench_train.py --device cuda; the H200's: bench_train.py. BENCHMARKS.md holds them.
GPU_PEAKS = [
    (4, 8192, "bfloat16", False, 16, 3.537), (4, 8192, "bfloat16", False, 32, 6.535),
    (4, 8192, "bfloat16", False, 48, 9.532), (12, 8192, "bfloat16", False, 16, 8.539),
    (12, 8192, "bfloat16", False, 32, 15.795), (12, 8192, "bfloat16", False, 48, 23.046),
    (4, 50257, "bfloat16", False, 16, 5.644), (4, 50257, "bfloat16", False, 32, 7.914),
    (4, 50257, "bfloat16", False, 48, 10.185), (12, 50257, "bfloat16", False, 16, 10.646),
    (12, 50257, "bfloat16", False, 32, 17.175), (12, 50257, "bfloat16", False, 48, 23.699),
    (12, 50257, "bfloat16", False, 12, 9.00), (12, 50257, "bfloat16", False, 120, 53.06),
    (12, 50257, "bfloat16", False, 240, 102.01),  # H200
    (12, 50257, "float32", False, 32, 26.826), (12, 50257, "float32", False, 96, 73.929),
    (12, 50257, "bfloat16", True, 12, 7.49), (12, 50257, "bfloat16", True, 32, 17.16),
    (12, 50257, "bfloat16", True, 120, 57.77), (12, 50257, "bfloat16", True, 240, 113.16),  # 240: H200
]


@pytest.mark.parametrize("layers, vocab, dtype, compiled, micro, measured", GPU_PEAKS)
def test_the_cuda_prediction_is_within_5_percent_of_the_peaks_measured_on_gpus(
        layers: int, vocab: int, dtype: str, compiled: bool, micro: int, measured: float) -> None:
    model = cfg.ModelConfig(n_layer=layers, n_head=12, n_embd=768, seq_len=1024)
    predicted = memory_estimate(model, vocab, micro, dtype, "cuda", compiled=compiled).tensors / 2**30
    assert abs(predicted / measured - 1) <= 0.05, (predicted, measured)
