"""The training-step benchmark runs end to end on this CPU, on a tiny shape, and reports every row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SCRIPT = SCRIPTS / "bench_train.py"
SHAPE = """
[model]
n_layer = 2
n_head = 2
n_embd = 32
seq_len = 32

[data]
tokenizer = "bpe"
vocab_size = 300

[train]
batch_size = 8
"""


def bench(tmp_path: Path, *args: str) -> dict:
    shape = tmp_path / "tiny.toml"
    shape.write_text(SHAPE)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--shape", str(shape), "--warmup", "1", "--steps", "2",
         "--variants", "eager", "--out", str(out), *args],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()) | {"stdout": proc.stdout}


def test_the_device_benchmark_times_both_models_at_every_micro_batch(tmp_path: Path) -> None:
    report = bench(tmp_path, "--micro", "2,4")
    rows = {(r["model"], r["mode"], r["micro"]): r for r in report["rows"]}
    # The planner's micro-batch comes first (the batch of 8 fits whole on this CPU), then the others.
    assert report["micros"] == [report["planner_micro"], 2, 4] and report["planner_micro"] == 8
    assert set(rows) == {(m, "eager", mb) for m in ("localtrain", "gpt2") for mb in (8, 2, 4)}
    for row in rows.values():
        assert row["tok_s"] == pytest.approx(row["micro"] * 32 / (row["ms"] / 1e3))
    # The baseline accumulates pieces of at most the largest micro-batch asked for; localtrain never.
    assert [rows[("gpt2", "eager", mb)]["accum"] for mb in (8, 2, 4)] == [2, 1, 1]
    assert {r["accum"] for (m, _, _), r in rows.items() if m == "localtrain"} == {1}
    assert all(0 < row["mfu_measured"] < 5 for row in rows.values())
    # Predicted memory comes from the planner for localtrain's rows, and grows with the micro-batch.
    predicted = [rows[("localtrain", "eager", mb)]["predicted_bytes"] for mb in (2, 4, 8)]
    assert predicted[0] < predicted[1] < predicted[2]
    ratios = {(r["mode"], r["micro"]): r["ratio"] for r in report["ratios"]}
    for mb in (8, 2, 4):
        assert ratios[("eager", mb)] == pytest.approx(rows[("localtrain", "eager", mb)]["tok_s"]
                                                      / rows[("gpt2", "eager", mb)]["tok_s"])
    assert "GPT-2 tok/s" in report["stdout"] and set(report["sections"]) >= {"peak", "localtrain eager", "gpt2 eager"}
    # The first micro-batch of each model is profiled: its operators, grouped by kind.
    profile = rows[("localtrain", "eager", 8)]["profile"]
    assert profile["kinds_ms"]["matmul"] > 0 and profile["top"]
    assert "profile" not in rows[("localtrain", "eager", 2)]


def test_a_spent_time_budget_skips_the_rest_but_keeps_the_report(tmp_path: Path) -> None:
    report = bench(tmp_path, "--micro", "2", "--no-plan", "--budget-s", "0")
    assert report["rows"] == []
    assert "skipped (time budget" in report["stdout"]


def test_the_mlx_comparison_times_both_frameworks_at_one_micro_batch(tmp_path: Path) -> None:
    pytest.importorskip("mlx.core", reason="needs MLX")
    report = bench(tmp_path, "--micro", "2", "--backend", "mlx")
    assert set(report["rows"]) == {"torch", "mlx"} and report["micro"] == 2
    assert report["ratio"] == pytest.approx(report["rows"]["mlx"]["tok_s"] / report["rows"]["torch"]["tok_s"])
    assert report["rows"]["mlx"]["grads_ms"] > 0 and report["rows"]["mlx"]["update_ms"] > 0


def test_a_row_that_runs_out_of_memory_is_retried_with_the_micro_batch_split(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import bench_step
    from localtrain.backends.base import OutOfMemory

    class Fake:
        which, compiled, flops_per_token, params = "localtrain", False, 1.0, 1

        def __init__(self) -> None:
            self.seen: list[list[int]] = []
            self.b = type("B", (), {"optimizer": type("O", (), {"zero_grad": lambda self, set_to_none: None})()})()

        def step(self, micro_batches) -> None:
            sizes = [len(x) for x, _ in micro_batches]
            self.seen.append(sizes)
            if sizes[0] > 2:
                raise OutOfMemory("CUDA out of memory")

    fake = Fake()
    row = bench_step.measure_row(fake, bench_step.batches(50, 8, 16), warmup=1, steps=2, device="cpu")
    # 8 and 4 ran out of memory; 4 x 2 fitted, and every timed step fed all 8 sequences.
    assert [s[0] for s in fake.seen[:3]] == [8, 4, 2] and fake.seen[-1] == [2, 2, 2, 2]
    assert row["micro"] == 8 and row["accum"] == 4 and row["tok_s"] == pytest.approx(8 * 16 / (row["ms"] / 1e3))


def test_the_tuning_benchmark_reports_each_candidate_beside_its_predicted_peak(tmp_path: Path) -> None:
    shape = tmp_path / "tiny.toml"
    shape.write_text(SHAPE)
    out = tmp_path / "tune.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_tune.py"), "--preset", str(shape), "--vocab", "300",
         "--set", "run.compile=off", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["tuning_s"] > 0
    rows = report["rows"]
    assert rows and all(not r["compile"] for r in rows)  # compile was set off: eager candidates alone
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["peak_bytes"] > 0 and r["predicted_bytes"] > 0 for r in ok)
    for r in ok:
        assert r["error"] == pytest.approx(r["predicted_bytes"] / r["peak_bytes"] - 1)
    labels = [f"{r['dtype']} eager, micro-batch {r['micro_batch_size']}" for r in rows]
    assert report["pick"] in labels and report["pick"] in proc.stdout
    assert f"tuning took {report['tuning_s']:.1f} s ({len(rows)} candidates)" in proc.stdout
