"""Exact resume with real processes: SIGKILL at a random moment (torch and MLX), a kill
during a checkpoint write, and SIGINT/SIGTERM leaving a complete checkpoint."""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, cli_env, last_step, localtrain, read_jsonl, read_jsonl_tolerant, sets, start_localtrain, step_losses, wait_for


def _mlx_installed() -> bool:
    try:
        return importlib.util.find_spec("mlx.core") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("backend", [
    "torch",
    pytest.param("mlx", marks=pytest.mark.skipif(not _mlx_installed(),
                                                 reason="MLX is not installed (pip install 'mlx[cpu]' on Linux)")),
])
def test_sigkill_after_a_checkpoint_then_resume_is_exact(backend, tmp_path, code_corpus, cache_dir) -> None:
    n = 20
    args = ["run", "--backend", backend, "--data", str(code_corpus), "--max-steps", str(2 * n),
            *sets(TINY + ["model.dropout=0.1"])]
    straight = localtrain([*args, "--run-dir", "straight"], tmp_path, cache_dir)
    assert straight.returncode == 0, straight.stderr
    plan = next(e for e in read_jsonl(tmp_path / "straight" / "events.jsonl") if e["type"] == "plan")
    assert plan["backend"] == backend

    killed_dir = tmp_path / "killed"
    proc = start_localtrain([*args, "--run-dir", "killed"], tmp_path, cache_dir)
    wait_for(lambda: (killed_dir / "checkpoints" / f"step-{n:08d}" / "COMPLETE").exists(), proc=proc)
    # A random moment after step N's checkpoint: once a random later step has run.
    seed = int(os.environ.get("LOCALTRAIN_TEST_SEED") or random.randrange(2**32))
    print(f"the kill point is drawn with seed {seed}: LOCALTRAIN_TEST_SEED={seed} draws it again")
    target = random.Random(seed).randint(n + 1, 2 * n - 4)
    wait_for(lambda: last_step(killed_dir) >= target, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done_before = [e for e in read_jsonl_tolerant(killed_dir / "events.jsonl") if e["type"] == "done"]
    assert done_before == []

    resumed = localtrain(["run", "--resume", "--run-dir", "killed"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr
    plan = [e for e in read_jsonl(killed_dir / "events.jsonl") if e["type"] == "plan"][-1]
    assert plan["resumed_from"] >= n

    a, b = step_losses(tmp_path / "straight"), step_losses(killed_dir)
    assert sorted(a) == sorted(b) == list(range(1, 2 * n + 1))
    assert a == b  # identical floats, every step, dropout included
    final = f"checkpoints/step-{2 * n:08d}/model.safetensors"
    assert (tmp_path / "straight" / final).read_bytes() == (killed_dir / final).read_bytes()


def test_a_kill_during_a_checkpoint_write_leaves_it_ignored(tmp_path, code_corpus, cache_dir) -> None:
    args = ["run", "--data", str(code_corpus), "--max-steps", "6",
            *sets(TINY + ["train.checkpoint_every=2", "train.eval_every=0", "train.sample_every=0"])]
    straight = localtrain([*args, "--run-dir", "straight"], tmp_path, cache_dir)
    assert straight.returncode == 0, straight.stderr

    # The run stops inside the write of step 4's checkpoint, after its first file, and is
    # killed there.
    run_dir, marker = tmp_path / "killed", tmp_path / "paused"
    ckpts = run_dir / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("pause_in_checkpoint.py")), *args, "--run-dir", "killed"],
        cwd=tmp_path, env={**cli_env(cache_dir), "PAUSE_AT_STEP": "4", "PAUSE_MARKER": str(marker)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    wait_for(marker.exists, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert Path(marker.read_text()).name == "model.safetensors"
    temps = [p for p in ckpts.iterdir() if p.name.startswith(".tmp-")]
    assert len(temps) == 1 and (temps[0] / "model.safetensors").exists() and not (temps[0] / "COMPLETE").exists()
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == ["step-00000002"]

    # What the killed process would leave had it died inside an atomic write of the run's own files;
    # a temporary of a process still alive (this test's) is not the resume's to remove.
    dead = [f".plan.json.tmp{proc.pid}", f".config.toml.tmp{proc.pid}", f".tokenizer.model.tmp{proc.pid}"]
    living = run_dir / f".plan.json.tmp{os.getpid()}"
    for name in dead:
        (run_dir / name).write_text("{}")
    living.write_text("{}")
    users = {"notes.txt": "mine", f".notes.txt.tmp{proc.pid}": "mine too"}  # a user's files beside them
    for name, text in users.items():
        (run_dir / name).write_text(text)
    resumed = localtrain(["run", "--resume", "--run-dir", "killed"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr
    plan = [e for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "plan"][-1]
    assert plan["resumed_from"] == 2
    assert not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())
    assert not any((run_dir / name).exists() for name in dead) and living.exists()
    assert {name: (run_dir / name).read_text() for name in users} == users
    final = "checkpoints/step-00000006/model.safetensors"
    assert (tmp_path / "straight" / final).read_bytes() == (run_dir / final).read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_checkpoints_and_exits_zero(tmp_path, code_corpus, cache_dir, sig) -> None:
    run_dir = tmp_path / "run"
    proc = start_localtrain(
        ["run", "--data", str(code_corpus), "--max-steps", "100000", "--run-dir", "run", *sets(TINY)],
        tmp_path, cache_dir,
    )
    wait_for(lambda: last_step(run_dir) >= 15, proc=proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    events = read_jsonl(run_dir / "events.jsonl")
    done = events[-1]
    assert done["type"] == "done" and done["reason"] == "interrupted"
    last = Path(done["checkpoint"])
    assert last.name == f"step-{done['step']:08d}" and (tmp_path / last / "COMPLETE").exists()
    assert "Continue with: localtrain run --resume --run-dir run" in out
    # It resumes from exactly there.
    again = localtrain(["run", "--resume", "--run-dir", "run", "--max-steps", str(done["step"] + 3)],
                       tmp_path, cache_dir)
    assert again.returncode == 0, again.stderr
    plans = [e for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "plan"]
    assert plans[-1]["resumed_from"] == done["step"]


def test_the_control_file_pauses_samples_checkpoints_and_stops(tmp_path, code_corpus, cache_dir) -> None:
    import time

    from localtrain.control import send

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    send(run_dir, "stop")  # written before the run: never replayed
    proc = start_localtrain(
        ["run", "--data", str(code_corpus), "--max-steps", "100000", "--run-dir", "run",
         *sets(TINY + ["train.sample_every=0", "train.checkpoint_every=0"])],
        tmp_path, cache_dir,
    )
    wait_for(lambda: last_step(run_dir) >= 5, proc=proc)
    send(run_dir, "pause")
    wait_for(lambda: any(e.get("state") == "paused" for e in read_jsonl_tolerant(run_dir / "events.jsonl")), proc=proc)
    paused_at = last_step(run_dir)
    time.sleep(0.5)
    assert last_step(run_dir) == paused_at  # no step while paused
    send(run_dir, "sample")
    send(run_dir, "checkpoint")
    wait_for(lambda: any(e["type"] == "checkpoint" for e in read_jsonl_tolerant(run_dir / "events.jsonl")), proc=proc)
    send(run_dir, "resume")
    wait_for(lambda: last_step(run_dir) >= paused_at + 5, proc=proc)
    send(run_dir, "stop")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    events = read_jsonl(run_dir / "events.jsonl")
    samples = [e for e in events if e["type"] == "sample"]
    ckpts = [e for e in events if e["type"] == "checkpoint"]
    assert samples and all(s["step"] == paused_at for s in samples)
    assert ckpts[0]["step"] == paused_at and ckpts[0]["reason"] == "requested"
    assert [e["state"] for e in events if e["type"] == "status"] == ["running", "paused", "running"]
    assert events[-1]["type"] == "done" and events[-1]["reason"] == "interrupted"
    assert ckpts[-1]["reason"] == "interrupt" and ckpts[-1]["step"] == events[-1]["step"]
