"""`localtrain doctor`: checks, the capacity table, --json, --probe, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psutil
import pytest

from conftest import localtrain
from localtrain.doctor import run_checks
from localtrain.memory import GB
from test_planner import machine


def test_json_agrees_with_psutil_and_plans_every_preset(tmp_path, cache_dir) -> None:
    result = localtrain(["doctor", "--json"], tmp_path, cache_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    m = report["machine"]
    vm = psutil.virtual_memory()
    assert abs(m["ram_total_bytes"] - vm.total) <= 0.05 * vm.total
    assert abs(m["ram_available_bytes"] - vm.available) <= 0.05 * vm.total
    disk = shutil.disk_usage(tmp_path)
    assert abs(m["disk"]["runs"]["free"] - disk.free) <= 0.05 * disk.free
    checks = {c["name"]: c["status"] for c in report["checks"]}
    assert checks["torch"] == "ok" and checks["python"] == "ok" and checks["memory"] in ("ok", "warn")
    rows = {r["preset"]: r for r in report["capacity"]}
    assert set(rows) == {"python-stdlib", "text", "tiny-shakespeare", "wikitext-103", "wikipedia-full", "gpt2-124m"}
    tiny = rows["tiny-shakespeare"]["plan"]
    assert tiny["fits"] and tiny["micro_batch_size"] * tiny["grad_accum_steps"] == 12
    # A speed is shown only where it was measured (here or by an earlier run of this shape), never from a formula.
    assert (tiny["predicted_tokens_per_s"] > 0) == tiny["decided_by"].startswith("measured")
    assert tiny["disk_needed"]["checkpoints"] > 0
    assert set(tiny["memory"]) >= {"weights", "gradients", "optimizer", "activations", "logits", "overhead"}


def test_the_table_and_a_single_preset_breakdown(tmp_path, cache_dir) -> None:
    result = localtrain(["doctor", "--preset", "tiny-shakespeare"], tmp_path, cache_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Capacity" in out and "tiny-shakespeare" in out and "torch/cpu" in out
    assert "memory term" in out and "activations" in out and "logits" in out


def test_an_unknown_preset_fails_the_run_of_doctor(tmp_path, cache_dir) -> None:
    result = localtrain(["doctor", "--preset", "no-such-preset", "--json"], tmp_path, cache_dir)
    assert result.returncode == 1
    row = json.loads(result.stdout)["capacity"][0]
    assert "is not a preset" in row["error"]


def test_probe_measures_the_plan_and_caches_it(tmp_path, cache_dir) -> None:
    args = ["doctor", "--preset", "tiny-shakespeare", "--set", "run.compile=off", "--json"]
    result = localtrain([*args, "--probe"], tmp_path, cache_dir)
    assert result.returncode == 0, result.stderr
    p = json.loads(result.stdout)["capacity"][0]["plan"]
    assert p["decided_by"] == "measured"
    (chosen,) = [c for c in p["candidates"] if c["chosen"]]
    assert (p["dtype"], p["micro_batch_size"]) == (chosen["dtype"], chosen["micro_batch_size"])
    # The figures shown are the chosen candidate's measured ones, not a formula's.
    assert p["predicted_peak_bytes"] == chosen["peak_bytes"]
    assert p["predicted_tokens_per_s"] == pytest.approx(12 * 64 / chosen["step_s"])
    assert "tune: " in result.stderr  # the measuring is shown as it happens
    assert json.loads((cache_dir / "tuning.json").read_text())
    # Later plans reuse the measurements; the memory model's own total was within 15% of them.
    again = json.loads(localtrain(args, tmp_path, cache_dir).stdout)["capacity"][0]["plan"]
    assert again["decided_by"] == "measured (cached)" and again["predicted_peak_bytes"] == p["predicted_peak_bytes"]
    assert abs(sum(again["memory"].values()) - chosen["peak_bytes"]) <= 0.15 * chosen["peak_bytes"]


def test_checks_warn_and_fail_on_scarce_memory_and_disk() -> None:
    tight = machine(ram_available_bytes=int(0.5 * GB),
                    disk={"runs": {"free": 5 * GB, "total": 10 * GB, "device": 1},
                          "cache": {"free": int(0.5 * GB), "total": 10 * GB, "device": 2}},
                    backends={"torch": "2.13", "sentencepiece": "0.2", "safetensors": "0.8", "numpy": "2"})
    status = {c.name: c.status for c in run_checks(tight, Path("runs"))}
    assert status["memory"] == "fail" and status["disk (runs)"] == "warn" and status["disk (cache)"] == "fail"
    assert status["textual"] == "warn" and status["torch"] == "ok"
    missing = machine(backends={"sentencepiece": "0.2"}, missing={"torch": "No module named 'torch'"})
    status = {c.name: c.status for c in run_checks(missing, Path("runs"))}
    assert status["torch"] == "fail"


def doctor_without(module: str, tmp_path, cache_dir) -> tuple[int, dict]:
    """Run doctor in a process where `module` cannot be imported, as on a machine without it."""
    import subprocess
    import sys

    from conftest import cli_env

    code = f"import sys; sys.modules[{module!r}] = None; from localtrain.cli import main; sys.exit(main(['doctor', '--json']))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def test_without_mlx_doctor_reports_it_and_passes(tmp_path, cache_dir) -> None:
    code, report = doctor_without("mlx", tmp_path, cache_dir)
    assert code == 0
    assert "mlx" in report["machine"]["missing"] and "mlx" not in report["machine"]["backends"]
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["mlx"] in ("skip", "warn")
    assert all("plan" in row for row in report["capacity"])


def test_without_torch_doctor_fails_the_check_but_does_not_crash(tmp_path, cache_dir) -> None:
    code, report = doctor_without("torch", tmp_path, cache_dir)
    assert code == 1
    torch_check = next(c for c in report["checks"] if c["name"] == "torch")
    assert torch_check["status"] == "fail" and "Reinstall" in torch_check["detail"]
