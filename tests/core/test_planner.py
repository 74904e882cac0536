"""The memory model, backend/dtype choice, micro-batch fitting, disk checks, OOM back-off."""

from __future__ import annotations


import pytest

from localtrain import config as cfg
from localtrain.errors import LocaltrainError
from localtrain.hardware import GPU, Machine
from localtrain.planner import (
    GB, check_plan, memory_estimate, micro_batch_candidates, next_smaller_micro, parse_size, plan,
)

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
    assert set(one.terms) == {"weights", "weight_casts", "gradients", "optimizer", "activations", "logits", "overhead"}
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


def test_dtype_follows_the_cpu_flags() -> None:
    config = cfg.resolve("tiny-shakespeare")
    p = plan(config, machine())
    assert p.dtype == "float32" and any("bf16" in n for n in p.notes)
    assert plan(config, machine(cpu_flags=["avx512_bf16"], cpu_native_bf16=True)).dtype == "bfloat16"
    assert plan(cfg.resolve("tiny-shakespeare", ["train.dtype=float16"]), machine()).dtype == "float16"


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
    squeezed = plan(cfg.resolve("wikitext-103", ["run.memory_budget=1.4GB"]), machine())
    assert squeezed.activation_checkpointing and squeezed.fits


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
    timed = plan(cfg.resolve("python-stdlib"), machine(), vocab_size=4096, peak_flops=100e9)
    assert timed.predicted_tokens_per_s == pytest.approx(0.5 * 100e9 / timed.flops_per_token)
    assert timed.predicted_seconds == pytest.approx(timed.total_tokens / timed.predicted_tokens_per_s)


def test_sizes_and_back_off_steps() -> None:
    assert parse_size("6GB") == 6 * GB and parse_size("512 MiB") == 512 * MB and parse_size("1.5g") == int(1.5 * GB)
    with pytest.raises(ValueError):
        parse_size("lots")
    assert micro_batch_candidates(12) == [12, 6, 4, 3, 2, 1]
    assert [next_smaller_micro(12, m) for m in (12, 6, 3, 1)] == [6, 3, 1, None]


def test_a_run_whose_disk_need_exceeds_free_space_fails_before_writing(tmp_path, monkeypatch, capsys) -> None:
    from localtrain.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["run", "--set", "train.keep_checkpoints=10000000"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Not enough disk" in err and "GiB free" in err
    assert not (tmp_path / "runs").exists()
