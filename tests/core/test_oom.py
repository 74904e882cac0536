"""Out-of-memory back-off: a real allocation failure under a memory budget, and an
injected one on a chosen step. Both keep the effective batch and the schedule."""

from __future__ import annotations

import json

import pytest

from conftest import read_jsonl, sets
from localtrain import backends
from localtrain.backends.base import OutOfMemory
from localtrain.cli import main

# Logits of a 4,096 vocabulary over 512 tokens dominate: ~22 MB per sequence. The budget
# arithmetic below reads the float32 terms of the plan, so the dtype is pinned.
SHAPE = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.seq_len=512", "data.vocab_size=4096",
         "train.batch_size=8", "train.micro_batch_size=8", "train.eval_every=0", "train.sample_every=0",
         "train.checkpoint_every=0", "train.log_every=1", "train.dtype=float32", "run.autotune=off"]


def losses(run_dir) -> list[float]:
    return [e["loss"] for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "step"]


def test_a_budget_smaller_than_the_step_needs_backs_off(in_tmp, code_corpus, capsys) -> None:
    args = ["run", "--data", str(code_corpus), "--max-steps", "3", "--plain", *sets(SHAPE)]
    assert main([*args, "--run-dir", "free"]) == 0
    # A budget midway between the predicted peaks at micro-batch 2 and 8, enforced as a
    # real limit on the process: micro-batch 8 cannot allocate its logits.
    plan = json.loads((in_tmp / "free" / "plan.json").read_text())
    per_sample = (plan["predicted_peak_bytes"] - plan["memory"]["overhead"] - plan["memory"]["weights"] * 4) / 8
    budget = int(plan["predicted_peak_bytes"] - 4 * per_sample)
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "localtrain", *args, "--run-dir", "capped",
                           "--set", f"run.memory_budget={budget}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = read_jsonl(in_tmp / "capped" / "events.jsonl")
    backoffs = [e for e in events if e["type"] == "warning" and e["code"] == "oom_backoff"]
    assert backoffs and "Out of memory at step 1 with micro-batch 8" in backoffs[0]["message"]
    steps = [e for e in events if e["type"] == "step"]
    assert [s["tokens"] for s in steps] == [8 * 512, 16 * 512, 24 * 512]  # the same batch every step
    assert losses(in_tmp / "capped") == pytest.approx(losses(in_tmp / "free"), abs=1e-5)


class FailingBackend(backends.backend_class("torch")):
    """The real torch backend, out of memory at step 3 whenever a micro-batch exceeds 2."""

    steps = 0

    def train_step(self, micro_batches, lr):
        if FailingBackend.steps == 2 and len(micro_batches[0][0]) > 2:
            raise OutOfMemory("injected")
        result = super().train_step(micro_batches, lr)
        FailingBackend.steps += 1
        return result


def test_an_injected_oom_on_a_chosen_step_backs_off_and_stays_backed_off(in_tmp, code_corpus, capsys,
                                                                         monkeypatch) -> None:
    args = ["run", "--data", str(code_corpus), "--max-steps", "5", "--plain", *sets(SHAPE),
            "--set", "train.checkpoint_every=4"]
    assert main([*args, "--run-dir", "plain"]) == 0
    monkeypatch.setattr(backends, "backend_class", lambda name: FailingBackend)
    FailingBackend.steps = 0
    assert main([*args, "--run-dir", "injected"]) == 0
    events = read_jsonl(in_tmp / "injected" / "events.jsonl")
    warnings = [e["message"] for e in events if e["type"] == "warning" and e["code"] == "oom_backoff"]
    assert warnings == [
        "Out of memory at step 3 with micro-batch 8: retrying with micro-batch 4 x 2 accumulation steps"
        " (the same 8 sequences per step).",
        "Out of memory at step 3 with micro-batch 4: retrying with micro-batch 2 x 4 accumulation steps"
        " (the same 8 sequences per step).",
    ]
    assert losses(in_tmp / "injected") == pytest.approx(losses(in_tmp / "plain"), abs=1e-5)
    state = json.loads((in_tmp / "injected" / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["micro_batch_size"] == 2
    # Resumed, the run keeps the backed-off micro-batch.
    assert main(["run", "--resume", "--run-dir", "injected", "--max-steps", "6", "--plain"]) == 0
    plan = [e for e in read_jsonl(in_tmp / "injected" / "events.jsonl") if e["type"] == "plan"][-1]
    assert (plan["micro_batch_size"], plan["grad_accum_steps"]) == (2, 4)


def test_out_of_memory_at_one_sequence_stops_with_a_clear_error(in_tmp, code_corpus, capsys, monkeypatch) -> None:
    class AlwaysOOM(backends.backend_class("torch")):
        def train_step(self, micro_batches, lr):
            raise OutOfMemory("injected")

    monkeypatch.setattr(backends, "backend_class", lambda name: AlwaysOOM)
    code = main(["run", "--data", str(code_corpus), "--max-steps", "3", "--plain", *sets(SHAPE), "--run-dir", "r"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Out of memory at step 1 even with one sequence per micro-batch" in err
    warnings = [e for e in read_jsonl(in_tmp / "r" / "events.jsonl") if e["type"] == "warning"]
    assert len(warnings) == 3  # 8 -> 4 -> 2 -> 1, then it stops: no endless retry
