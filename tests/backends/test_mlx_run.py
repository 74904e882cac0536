"""Whole runs on the MLX backend (its CPU build here): exact resume after SIGKILL, and
checkpoints that move between MLX and torch mid-run."""

from __future__ import annotations

import random
import signal

import pytest

from conftest import TINY, last_step, localtrain, read_jsonl, sets, start_localtrain, step_losses, wait_for

pytest.importorskip("mlx.core", reason="MLX is not installed (pip install 'mlx[cpu]' on Linux)")

N = 20


def test_mlx_resumes_exactly_after_sigkill(tmp_path, code_corpus, cache_dir) -> None:
    args = ["run", "--backend", "mlx", "--data", str(code_corpus), "--max-steps", str(2 * N),
            *sets(TINY + ["model.dropout=0.1"])]
    straight = localtrain([*args, "--run-dir", "straight"], tmp_path, cache_dir)
    assert straight.returncode == 0, straight.stderr
    plan = next(e for e in read_jsonl(tmp_path / "straight" / "events.jsonl") if e["type"] == "plan")
    assert plan["backend"] == "mlx"

    killed = tmp_path / "killed"
    proc = start_localtrain([*args, "--run-dir", "killed"], tmp_path, cache_dir)
    wait_for(lambda: (killed / "checkpoints" / f"step-{N:08d}" / "COMPLETE").exists(), proc=proc)
    target = random.Random().randint(N + 1, 2 * N - 4)
    wait_for(lambda: last_step(killed) >= target, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    resumed = localtrain(["run", "--resume", "--run-dir", "killed"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr
    a, b = step_losses(tmp_path / "straight"), step_losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 2 * N + 1))
    assert a == b  # identical floats, dropout included
    final = f"checkpoints/step-{2 * N:08d}/model.safetensors"
    assert (tmp_path / "straight" / final).read_bytes() == (killed / final).read_bytes()


@pytest.mark.parametrize("first,second", [("torch", "mlx"), ("mlx", "torch")])
def test_a_run_moves_between_backends_mid_run(first, second, tmp_path, code_corpus, cache_dir) -> None:
    # A flat learning rate after warmup, so a 20-step run follows the 40-step schedule.
    common = [*sets(TINY + ["train.min_lr_ratio=1.0"]), "--data", str(code_corpus), "--max-steps", str(2 * N)]
    straight = localtrain(["run", "--backend", first, "--run-dir", "straight", *common], tmp_path, cache_dir)
    assert straight.returncode == 0, straight.stderr

    moved = tmp_path / "moved"
    half = localtrain(["run", "--backend", first, "--run-dir", "moved", *common, "--max-steps", str(N)],
                      tmp_path, cache_dir)
    assert half.returncode == 0, half.stderr
    rest = localtrain(["run", "--resume", "--run-dir", "moved", "--backend", second, "--max-steps", str(2 * N)],
                      tmp_path, cache_dir)
    assert rest.returncode == 0, rest.stderr
    plans = [e for e in read_jsonl(moved / "events.jsonl") if e["type"] == "plan"]
    assert [p["backend"] for p in plans] == [first, second]
    assert plans[-1]["resumed_from"] == N

    a, b = step_losses(tmp_path / "straight"), step_losses(moved)
    assert sorted(a) == sorted(b) == list(range(1, 2 * N + 1))
    assert all(a[s] == b[s] for s in range(1, N + 1))  # the same backend up to the move
    worst = max(abs(a[s] - b[s]) for s in range(N + 1, 2 * N + 1))
    assert worst < 1e-3, f"after the move the losses differ by up to {worst:.2e}"
