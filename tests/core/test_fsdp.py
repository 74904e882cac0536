"""FSDP on torchrun with gloo: parity with one process and with DDP, checkpoints in the shared
format gathered from the shards, exact resume after a SIGKILL of the launcher, resuming on
one process, under DDP and on MLX, a failing rank, and the planner's sharded memory model."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (
    FP32, TINY, cli_env, last_step, localtrain, read_jsonl, sets, start_localtrain, step_losses, torchrun_failure,
    wait_for,
)
from localtrain import config as cfg
from localtrain.checkpoint import complete_checkpoints, load
from localtrain.doctor import devices_needed
from localtrain.hardware import GPU
from localtrain.metrics import params_count
from localtrain.memory import GB, memory_estimate
from localtrain.plan import Choice, Measured, Tuned
from localtrain.planner import check_plan, plan
from test_planner import machine

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo workers need a POSIX host")

ARGS = ["run", "--max-steps", "30", "--plain", *sets(TINY + FP32)]
FSDP = ["--nproc", "2", "--set", "run.parallel=fsdp"]
FINAL = "checkpoints/step-00000030"


def plan_events(run_dir: Path) -> list[dict]:
    return [e for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "plan"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, code_corpus, cache_dir) -> Path:
    """30 steps of the same run on one process, sharded over two, and replicated over two."""
    root = tmp_path_factory.mktemp("fsdp")
    data = ["--data", str(code_corpus)]
    for name, extra in (("one", []), ("fsdp", FSDP), ("ddp", ["--nproc", "2"])):
        done = localtrain([*ARGS, *data, "--run-dir", name, *extra], root, cache_dir)
        assert done.returncode == 0, done.stderr
    return root


def test_two_shards_match_one_process_with_twice_the_micro_batch_and_ddp(runs) -> None:
    one, fsdp, ddp = (plan_events(runs / n)[0] for n in ("one", "fsdp", "ddp"))
    assert (one["world_size"], one["micro_batch_size"], one["parallel"]) == (1, 8, "none")
    assert (fsdp["world_size"], fsdp["micro_batch_size"], fsdp["parallel"]) == (2, 4, "fsdp")
    assert (ddp["world_size"], ddp["micro_batch_size"], ddp["parallel"]) == (2, 4, "ddp")
    a, b, c = (step_losses(runs / n) for n in ("one", "fsdp", "ddp"))
    assert sorted(a) == sorted(b) == sorted(c) == list(range(1, 31))
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5
    assert max(abs(c[k] - b[k]) for k in a) < 1e-5
    # The evaluations ran on the sharded model too (every rank joins each forward).
    evals = [e for e in read_jsonl(runs / "fsdp" / "events.jsonl") if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 10, 20, 30]
    # The checkpoint gathered from the shards is the one-process checkpoint: same names, same values.
    mine, theirs = load(runs / "fsdp" / FINAL), load(runs / "one" / FINAL)
    assert sorted(mine.weights) == sorted(theirs.weights) and sorted(mine.moments) == sorted(theirs.moments)
    assert max(float(np.abs(mine.weights[k] - theirs.weights[k]).max()) for k in mine.weights) < 1e-4
    for k in mine.moments:
        assert np.allclose(mine.moments[k], theirs.moments[k], rtol=1e-3, atol=1e-9), k
    assert len([e for e in read_jsonl(runs / "fsdp" / "events.jsonl") if e["type"] == "done"]) == 1


def test_sigkill_then_exact_resume_and_resume_on_one_process_ddp_and_mlx(runs, code_corpus, cache_dir) -> None:
    run_dir = runs / "killed"
    proc = start_localtrain([*ARGS, "--data", str(code_corpus), "--run-dir", "killed", *FSDP], runs, cache_dir)
    wait_for(lambda: (run_dir / "checkpoints" / "step-00000020" / "COMPLETE").exists(), proc=proc)
    wait_for(lambda: last_step(run_dir) >= 24, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    resumed = localtrain(["run", "--resume", "--run-dir", "killed", "--nproc", "2", "--plain"], runs, cache_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert plan_events(run_dir)[-1]["resumed_from"] == 20 and plan_events(run_dir)[-1]["parallel"] == "fsdp"
    recorded = load(run_dir / "checkpoints" / "step-00000020").state["plan"]
    assert (recorded["parallel"], recorded["world_size"]) == ("fsdp", 2)
    assert step_losses(run_dir) == step_losses(runs / "fsdp")
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (run_dir / FINAL / name).read_bytes() == (runs / "fsdp" / FINAL / name).read_bytes()

    # The same checkpoint continues in one process and under DDP, alike.
    shutil.copytree(run_dir, runs / "as-ddp")
    more = ["--max-steps", "35", "--plain"]
    one = localtrain(["run", "--resume", "--run-dir", "killed", *more, "--set", "run.parallel=auto"], runs, cache_dir)
    assert one.returncode == 0, one.stderr
    ddp = localtrain(["run", "--resume", "--run-dir", "as-ddp", *more, "--nproc", "2", "--set", "run.parallel=ddp"],
                     runs, cache_dir)
    assert ddp.returncode == 0, ddp.stderr
    p1, p2 = plan_events(run_dir)[-1], plan_events(runs / "as-ddp")[-1]
    assert (p1["resumed_from"], p1["world_size"], p1["parallel"]) == (30, 1, "none")
    assert (p2["resumed_from"], p2["world_size"], p2["parallel"]) == (30, 2, "ddp")
    assert load(run_dir / "checkpoints" / "step-00000035").state["plan"]["parallel"] == "none"
    a, b = step_losses(run_dir), step_losses(runs / "as-ddp")
    assert max(abs(a[k] - b[k]) for k in range(31, 36)) < 1e-5


def test_a_sharded_checkpoint_loads_on_mlx(runs) -> None:
    pytest.importorskip("mlx.core")
    from localtrain.backends.mlx_backend import MLXBackend
    from localtrain.backends.torch_backend import TorchBackend

    config = cfg.resolve(base=cfg.read_toml(runs / "fsdp" / "config.toml"))
    ckpt = load(runs / "fsdp" / FINAL)
    vocab = ckpt.state["vocab_size"]
    x = np.arange(2 * config.model.seq_len).reshape(2, -1) % vocab
    losses = []
    for backend in (MLXBackend("cpu", "float32"), TorchBackend("cpu", "float32")):
        backend.build(config.model, vocab, 0)
        backend.configure_optimizer(config.train)
        backend.load_state_arrays(ckpt.weights, ckpt.moments, ckpt.state["optimizer_step"])
        losses.append(backend.token_losses(x, np.roll(x, -1, axis=1)))
    assert np.abs(losses[0] - losses[1]).max() < 1e-3


def backend_checks(nproc: int, device: str, cwd: Path, cache_dir: Path) -> dict:
    """Run fsdp_checks.py under torchrun and check its report; returns the report."""
    script = Path(__file__).with_name("fsdp_checks.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone",
         "--max-restarts=0", "--monitor-interval=0.5", str(script), device],
        cwd=cwd, env=cli_env(cache_dir), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode in ("per_micro_batch", "unsharded", "checkpointing"):
        r = report[mode]
        assert r["loss"] < 1e-5 and r["grad_norm"] < 1e-5 and r["weights"] < 1e-5, (mode, r)
        assert r["moments"] < 1e-7, (mode, r)
        # The root stays gathered between micro-batches; block gradients are reduce-scattered
        # after each micro-batch unless they accumulate unsharded.
        assert r["root_gathered"] and r["sharded_grads"] == (mode != "unsharded"), (mode, r)
    loaded = report["loaded"]
    assert loaded["roundtrip"] == 0.0 and loaded["eval"] < 1e-6 and loaded["generate"], loaded
    assert loaded["next_loss"] < 1e-5 and loaded["next_weights"] < 1e-5, loaded
    # 16-bit rounding differs with the micro-batch: close, not equal.
    assert report["float16"] < 1e-2, report
    return report


def test_the_sharded_backend_against_an_unsharded_one(tmp_path, cache_dir) -> None:
    """Both accumulation modes and activation checkpointing give the unsharded step (loss, the
    clipped norm over the shards, weights, moments); a checkpoint's arrays load into shards."""
    backend_checks(2, "cpu", tmp_path, cache_dir)


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_fsdp_on_one_gpu_with_nccl(tmp_path, code_corpus, cache_dir) -> None:
    """One process under torchrun: FSDP over NCCL matches the unsharded backend and the same run
    without torchrun; its bf16 policy with compiled blocks trains close to fp32."""
    report = backend_checks(1, "cuda", tmp_path, cache_dir)
    assert report["bf16_compiled"] < 0.05, report
    args = [*ARGS, "--data", str(code_corpus), "--device", "cuda", "--set", "run.compile=off"]
    one = localtrain([*args, "--run-dir", "one"], tmp_path, cache_dir)
    fsdp = localtrain([*args, "--run-dir", "fsdp", "--nproc", "1", "--set", "run.parallel=fsdp"], tmp_path, cache_dir)
    assert one.returncode == 0, one.stderr
    assert fsdp.returncode == 0, fsdp.stderr
    assert (plan_events(tmp_path / "fsdp")[0]["parallel"], plan_events(tmp_path / "fsdp")[0]["device"]) == ("fsdp", "cuda")
    a, b = step_losses(tmp_path / "one"), step_losses(tmp_path / "fsdp")
    assert sorted(a) == sorted(b) == list(range(1, 31))
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst < 1e-5, worst


def test_fsdp_without_processes_explains_and_writes_nothing(tmp_path, code_corpus, cache_dir) -> None:
    done = localtrain([*ARGS, "--data", str(code_corpus), "--run-dir", "r", "--set", "run.parallel=fsdp"],
                      tmp_path, cache_dir)
    assert done.returncode != 0
    assert "run.parallel = fsdp" in done.stderr and "--nproc" in done.stderr and "run.parallel=auto" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()
    mlx = localtrain([*ARGS, "--data", str(code_corpus), "--backend", "mlx", "--set", "run.parallel=fsdp"],
                     tmp_path, cache_dir)
    assert mlx.returncode != 0 and "`run.parallel`" in mlx.stderr and "mlx" in mlx.stderr
    typo = localtrain([*ARGS, "--data", str(code_corpus), "--set", "run.parallel=fdsp"], tmp_path, cache_dir)
    assert typo.returncode != 0 and "Did you mean `fsdp`" in typo.stderr


def test_a_failing_rank_brings_the_sharded_job_down(tmp_path, code_corpus, cache_dir) -> None:
    args = ["run", "--data", str(code_corpus), "--max-steps", "1000", "--plain", "--run-dir", "r",
            "--set", "run.parallel=fsdp", *sets(TINY + ["train.checkpoint_every=5"])]
    script = Path(__file__).with_name("ddp_fault.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "--max-restarts=0",
         "--monitor-interval=0.5", str(script), *args],
        cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "injected failure on rank 1 at step 6" in torchrun_failure(proc.stderr, 1)
    (last,) = complete_checkpoints(tmp_path / "r")[-1:]
    assert last.name == "step-00000005"
    assert sorted(load(last).moments)  # gathered from both ranks, and it verifies


# -- the planner ------------------------------------------------------------------------

def test_sharded_terms_divide_the_model_state_and_add_the_gathered_blocks() -> None:
    m = cfg.resolve("wikitext-103").model
    p = params_count(m, m.vocab_rows(32000))
    ddp = memory_estimate(m, 32000, 4, "float32", "cpu")
    for world in (1, 2, 3, 8):
        fsdp = memory_estimate(m, 32000, 4, "float32", "cpu", parallel="fsdp", world_size=world)
        assert fsdp.terms["weights"] == fsdp.terms["gradients"] == -(-4 * p // world)
        assert fsdp.terms["optimizer"] == -(-8 * p // world)
        for same in ("activations", "logits", "overhead"):
            assert fsdp.terms[same] == ddp.terms[same]
        # Gathering costs something: one process of FSDP needs more than DDP's one process.
        assert fsdp.terms["gathered_weights"] > 0 and (world > 1 or fsdp.total > ddp.total)
    # On a GPU the blocks are gathered in 16 bits and autocast keeps no weight copies.
    gpu = memory_estimate(m, 32000, 4, "bfloat16", "cuda", parallel="fsdp", world_size=2)
    cpu = memory_estimate(m, 32000, 4, "bfloat16", "cpu", parallel="fsdp", world_size=2)
    assert gpu.terms["weight_casts"] == 0 and cpu.terms["weight_casts"] == 2 * p
    assert gpu.terms["gathered_weights"] * 2 == cpu.terms["gathered_weights"]


# A 2B-parameter model: 32 GB of fp32 weights, gradients and moments replicated.
BIG = ["model.n_layer=24", "model.n_head=32", "model.n_embd=2560", "model.seq_len=1024", "train.batch_size=8"]


def test_auto_shards_only_what_does_not_fit_one_device() -> None:
    two_cards = machine(gpus=[GPU(i, "RTX 4090", 24 * GB, 24 * GB, "8.9", True) for i in range(2)])
    big = cfg.resolve("gpt2-124m", BIG)
    p = plan(big, two_cards, vocab_size=50257, world_size=2)
    assert p.parallel == "fsdp" and p.fits and any("FSDP" in n for n in p.notes)
    check_plan(p, two_cards)
    assert p.predicted_peak_bytes < plan(big, two_cards, vocab_size=50257, world_size=2, parallel="ddp").min_peak_bytes
    # A model that fits one card stays on DDP, which communicates less; one process has nothing to share.
    small = cfg.resolve("gpt2-124m")
    assert plan(small, two_cards, vocab_size=50257, world_size=2).parallel == "ddp"
    assert plan(big, two_cards, vocab_size=50257, world_size=1).parallel == "none"
    # The user's choice wins, in both directions.
    forced = cfg.resolve("gpt2-124m", ["run.parallel=fsdp"])
    assert plan(forced, two_cards, vocab_size=50257, world_size=2).parallel == "fsdp"
    assert plan(forced, two_cards, vocab_size=50257, world_size=1).parallel == "fsdp"
    # doctor's device count is the planner's: it fits over that many, not over one fewer.
    single = plan(big, two_cards, vocab_size=50257)
    n = devices_needed(big, single)
    assert n is not None and n >= 2 and devices_needed(small, plan(small, two_cards, vocab_size=50257)) == 1
    assert plan(big, two_cards, vocab_size=50257, world_size=n).parallel == "fsdp"
    sharded = cfg.resolve("gpt2-124m", [*BIG, "run.parallel=fsdp"])
    fewer = plan(sharded, two_cards, vocab_size=50257, world_size=n - 1)
    assert fewer.min_peak_bytes > fewer.budget_bytes * 0.9


def test_a_resumed_sharded_run_stays_sharded_on_the_same_processes() -> None:
    two_cards = machine(gpus=[GPU(i, "RTX 4090", 24 * GB, 24 * GB, "8.9", True) for i in range(2)])
    small = cfg.resolve("gpt2-124m")
    assert plan(small, two_cards, 50257, world_size=2).parallel == "ddp"
    was = {"backend": "torch", "dtype": "bfloat16", "compile": True, "micro_batch_size": 4,
           "activation_checkpointing": False, "parallel": "fsdp", "world_size": 2}
    kept = plan(small, two_cards, 50257, world_size=2, resumed=was)
    assert (kept.parallel, kept.decided_by) == ("fsdp", "resumed") and kept.fits
    # Another number of processes, or a checkpoint that recorded no mode: chosen afresh.
    assert plan(small, two_cards, 50257, world_size=4, resumed=was).parallel == "ddp"
    assert plan(small, two_cards, 50257, world_size=2, resumed={**was, "parallel": None}).parallel == "ddp"
    # The user's setting wins over the checkpoint's.
    ddp = cfg.resolve("gpt2-124m", ["run.parallel=ddp"])
    assert plan(ddp, two_cards, 50257, world_size=2, resumed=was).parallel == "ddp"
    # A replicated run that no longer fits one card is sharded, resumed or not.
    big = cfg.resolve("gpt2-124m", BIG)
    assert plan(big, two_cards, 50257, world_size=2, resumed={**was, "parallel": "ddp"}).parallel == "fsdp"


def test_unsharded_accumulation_only_where_the_full_gradient_fits() -> None:
    card = machine(gpus=[GPU(0, "RTX 4090", 24 * GB, 24 * GB, "8.9", True)])
    config = cfg.resolve("gpt2-124m", ["run.parallel=fsdp", "train.batch_size=64", "train.micro_batch_size=8"])
    roomy = plan(config, card, vocab_size=50257, world_size=2)
    assert roomy.grad_accum_steps == 4 and roomy.accumulate_unsharded
    assert roomy.memory["held_gradients"] == 4 * roomy.params
    # Just under what holding the full gradient takes: the shards are reduced after every micro-batch.
    need = roomy.predicted_peak_bytes
    tight = cfg.resolve("gpt2-124m", ["run.parallel=fsdp", "train.batch_size=64", "train.micro_batch_size=8",
                                      f"run.memory_budget={int((need - 1) / 0.9)}"])
    lean = plan(tight, card, vocab_size=50257, world_size=2)
    assert not lean.accumulate_unsharded and lean.memory["held_gradients"] == 0
    assert lean.predicted_peak_bytes == need - 4 * roomy.params
    # Without accumulation there is nothing to hold.
    assert not plan(cfg.resolve("gpt2-124m", ["run.parallel=fsdp", "train.batch_size=16"]), card,
                    vocab_size=50257, world_size=2).accumulate_unsharded


def test_the_tuners_unsharded_measurements_do_not_decide_a_sharded_run() -> None:
    card = machine(gpus=[GPU(0, "RTX 4090", 24 * GB, 24 * GB, "8.9", True)])
    # One unsharded process measured float32 fastest, with a peak that the sharded run never reaches.
    timed = Tuned((Measured(Choice("float32", False, 16), "ok", step_s=0.1, peak_bytes=20 * GB),))
    replicated = plan(cfg.resolve("gpt2-124m", ["train.batch_size=32"]), card, 50257, world_size=2, tuned=timed)
    assert replicated.decided_by == "measured" and replicated.dtype == "float32"
    sharded = plan(cfg.resolve("gpt2-124m", ["train.batch_size=32", "run.parallel=fsdp"]), card, 50257,
                   world_size=2, tuned=timed)
    assert sharded.decided_by == "defaults" and sharded.dtype == "bfloat16" and not sharded.candidates
    assert sharded.predicted_peak_bytes == sum(sharded.memory.values()) < 20 * GB
