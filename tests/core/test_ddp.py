"""Data parallelism on torchrun with gloo: parity with one process, also after resuming on a
smaller world, exact resume after a SIGKILL of the launcher, a failing rank, and a bad input
that the first rank finds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (
    FP32, TINY, cli_env, last_step, localtrain, read_jsonl, sets, start_localtrain, step_losses, torchrun_failure,
    wait_for,
)
from localtrain.checkpoint import complete_checkpoints, load

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo workers need a POSIX host")


def test_two_processes_match_one_process_also_after_the_world_shrinks(tmp_path, code_corpus, cache_dir) -> None:
    # A flat rate after warmup: a run stopped at step 10 and continued to 20 follows the
    # 20-step schedule, so an uninterrupted run is its reference step by step.
    args = ["run", "--data", str(code_corpus), "--max-steps", "20", "--plain",
            *sets(TINY + FP32 + ["train.min_lr_ratio=1.0"])]
    one = localtrain([*args, "--run-dir", "one"], tmp_path, cache_dir)
    two = localtrain([*args, "--run-dir", "two", "--nproc", "2"], tmp_path, cache_dir)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    plan1 = next(e for e in read_jsonl(tmp_path / "one" / "events.jsonl") if e["type"] == "plan")
    plan2 = next(e for e in read_jsonl(tmp_path / "two" / "events.jsonl") if e["type"] == "plan")
    assert (plan1["world_size"], plan1["micro_batch_size"]) == (1, 8)
    assert (plan2["world_size"], plan2["micro_batch_size"]) == (2, 4)
    a, b = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5
    # Rank 0 alone wrote the run directory: one config, one event stream, one checkpoint set.
    assert len([e for e in read_jsonl(tmp_path / "two" / "events.jsonl") if e["type"] == "done"]) == 1

    # Ten steps on two processes, the next ten on one: the data cursor is global, so the one
    # process takes the whole batch the two would have shared, and every loss stays the same.
    half = localtrain([*args, "--run-dir", "shrunk", "--nproc", "2", "--max-steps", "10"], tmp_path, cache_dir)
    assert half.returncode == 0, half.stderr
    rest = localtrain(["run", "--resume", "--run-dir", "shrunk", "--max-steps", "20", "--plain"], tmp_path, cache_dir)
    assert rest.returncode == 0, rest.stderr
    events = read_jsonl(tmp_path / "shrunk" / "events.jsonl")
    plans = [e for e in events if e["type"] == "plan"]
    assert [(p["world_size"], p["resumed_from"]) for p in plans] == [(2, None), (1, 10)]
    after = {e["step"]: e["loss"] for e in events[events.index(plans[-1]):] if e["type"] == "step"}
    assert sorted(after) == list(range(11, 21))
    assert max(abs(after[k] - a[k]) for k in after) < 1e-5


def test_sigkill_of_the_launcher_then_exact_resume(tmp_path, code_corpus, cache_dir) -> None:
    args = ["run", "--data", str(code_corpus), "--max-steps", "30", "--plain", *sets(TINY + ["model.dropout=0.1"])]
    straight = localtrain([*args, "--run-dir", "straight", "--nproc", "2"], tmp_path, cache_dir)
    assert straight.returncode == 0, straight.stderr

    run_dir = tmp_path / "killed"
    proc = start_localtrain([*args, "--run-dir", "killed", "--nproc", "2"], tmp_path, cache_dir)
    wait_for(lambda: (run_dir / "checkpoints" / "step-00000010" / "COMPLETE").exists(), proc=proc)
    wait_for(lambda: last_step(run_dir) >= 14, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    # The workers die with their launcher: nothing holds the run directory.
    resumed = localtrain(["run", "--resume", "--run-dir", "killed", "--nproc", "2", "--plain"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr
    state = json.loads((run_dir / "checkpoints" / "step-00000030" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert step_losses(run_dir) == step_losses(tmp_path / "straight")
    final = "checkpoints/step-00000030/model.safetensors"
    assert (run_dir / final).read_bytes() == (tmp_path / "straight" / final).read_bytes()


def test_a_failing_rank_brings_the_job_down_and_keeps_the_last_checkpoint(tmp_path, code_corpus, cache_dir) -> None:
    args = ["run", "--data", str(code_corpus), "--max-steps", "1000", "--plain", "--run-dir", "r",
            *sets(TINY + ["train.checkpoint_every=5"])]
    script = Path(__file__).with_name("ddp_fault.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "--max-restarts=0",
         "--monitor-interval=0.5", str(script), *args],
        cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "injected failure on rank 1 at step 6" in proc.stderr
    # torchrun's summary names the failing rank with its error.
    assert "injected failure on rank 1 at step 6" in torchrun_failure(proc.stderr, 1)
    (last,) = complete_checkpoints(tmp_path / "r")[-1:]
    assert last.name == "step-00000005"
    load(last)  # every file verifies


def test_a_bad_input_the_first_rank_finds_ends_the_job_with_its_paragraph_alone(tmp_path, cache_dir) -> None:
    # The data is read by rank 0 while the other rank waits for it; that rank stops with it,
    # and the launcher adds neither torchrun's failure report nor a traceback.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    done = localtrain(["run", "--nproc", "2", "--preset", "text", "--data", str(empty), "--run-dir", "r", "--plain",
                       *sets(TINY)], tmp_path, cache_dir)
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    assert line.startswith(f"[rank 0] error: The data source `{empty}` yields no documents to train on")
    assert not (tmp_path / "r").exists()  # nothing written
