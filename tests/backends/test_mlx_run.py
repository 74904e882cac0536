"""Whole runs that move between MLX (its CPU build here) and torch mid-run. Exact resume
after SIGKILL on MLX is in tests/core/test_resume.py, beside torch's."""

from __future__ import annotations

import pytest

from conftest import FP32, TINY, localtrain, read_jsonl, sets, step_losses

pytest.importorskip("mlx.core", reason="MLX is not installed (pip install 'mlx[cpu]' on Linux)")

N = 20


@pytest.mark.parametrize("first,second", [("torch", "mlx"), ("mlx", "torch")])
def test_a_run_moves_between_backends_mid_run(first, second, tmp_path, code_corpus, cache_dir) -> None:
    # A flat learning rate after warmup, so a 20-step run follows the 40-step schedule.
    common = [*sets(TINY + FP32 + ["train.min_lr_ratio=1.0"]), "--data", str(code_corpus), "--max-steps", str(2 * N)]
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
