"""The tuner: real candidates timed in a real subprocess, the cache, explicit settings that
win, resumed runs that never re-tune, and candidates that run out of memory or kill their
measuring process."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import localtrain, read_jsonl, sets
from localtrain import config as cfg, hardware, tuner
from localtrain.plan import Choice
from localtrain.planner import candidates, plan

# Two layers of 32: a step takes milliseconds, so timing a candidate costs well under a second.
SHAPE = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.seq_len=32", "train.batch_size=8",
         "data.tokenizer=char", "data.character_coverage=1.0"]
VOCAB = 68


def config(*extra: str) -> cfg.Config:
    return cfg.resolve("tiny-shakespeare", [*SHAPE, *extra])


@pytest.fixture(scope="module")
def machine(tmp_path_factory) -> hardware.Machine:
    where = tmp_path_factory.mktemp("machine")
    return hardware.probe(where, where)


def stages(events) -> list[str]:
    return [e.stage for e in events]


def test_a_second_tuning_reads_the_cache_and_a_new_version_or_shape_measures_again(tmp_path, machine) -> None:
    c = config("run.compile=off")
    events: list = []
    first = tuner.tune(c, machine, VOCAB, tmp_path, events.append)
    assert not first.cached and first.seconds > 0
    measured = [e for e in events if e.stage == "measured"]
    # Both dtypes at the largest micro-batch (8), then the smaller ones (4, 2) of the faster dtype.
    assert len(measured) == len(first.measured) == 4
    assert {m.choice.dtype for m in first.measured} == {"float32", "bfloat16"}
    assert sorted(m.choice.micro_batch_size for m in first.measured) == [2, 4, 8, 8]
    assert all(m.status in ("ok", "slower") and m.step_s > 0 and m.peak_bytes > 0 for m in first.measured)
    # A live sample's decoding is timed once per dtype, in the first candidate of it measured.
    assert sorted(m.choice.dtype for m in first.measured if m.decode_s > 0) == ["bfloat16", "float32"]
    table = json.loads((tmp_path / tuner.CACHE_FILE).read_text())
    assert len(table) == 1

    events.clear()
    again = tuner.tune(c, machine, VOCAB, tmp_path, events.append)
    assert again.cached and stages(events) == ["cached"] and again.measured == first.measured

    newer = dataclasses.replace(machine, backends={**machine.backends, "torch": "99.0.0"})
    events.clear()
    tuner.tune(c, newer, VOCAB, tmp_path, events.append)
    assert "measured" in stages(events)
    events.clear()
    tuner.tune(config("run.compile=off", "model.n_embd=48"), machine, VOCAB, tmp_path, events.append)
    assert "measured" in stages(events)
    assert len(json.loads((tmp_path / tuner.CACHE_FILE).read_text())) == 3


def test_compiled_candidates_are_timed_with_their_warm_up(tmp_path, machine) -> None:
    c = config("train.dtype=float32")
    found = tuner.tune(c, machine, VOCAB, tmp_path, lambda e: None)
    compiled = [m for m in found.measured if m.choice.compile]
    eager = [m for m in found.measured if not m.choice.compile]
    assert len(compiled) == 1 and len(eager) == 3
    # The compiled one is timed at the micro-batch the eager search found fastest.
    fastest = min((m for m in eager if m.status == "ok"), key=lambda m: m.step_s)
    assert compiled[0].choice.micro_batch_size == fastest.choice.micro_batch_size
    if compiled[0].status == "ok":
        assert compiled[0].warmup_s > 0
    p = plan(c, machine, VOCAB, tuned=found)
    assert p.decided_by == "measured" and sum(row["chosen"] for row in p.candidates) == 1


def test_a_compiled_candidate_ahead_even_after_its_cold_compile_is_not_compiled_again() -> None:
    from localtrain.backends import probe

    spec = {"backend": "torch", "device": "cpu", "threads": 0, "vocab_size": VOCAB,
            "model": dataclasses.asdict(config().model), "rank_batch": 8}
    cand = {"dtype": "float32", "compile": True, "micro_batch_size": 8}
    # Over a million steps a compiled step beats one of a minute whatever its compile took.
    ahead = probe.measure({**spec, "steps": 10**6, "best_step_s": 60.0}, cand)
    assert ahead["status"] == "ok" and "cold compile" in ahead["detail"]
    # With nothing to beat (or a run too short to tell), the warm compile a new process pays is measured.
    for unknown in ({"steps": 10**6}, {"best_step_s": 60.0}):
        measured = probe.measure({**spec, **unknown}, cand)
        assert measured["status"] == "ok" and "cold compile" not in measured["detail"]


# Shapes whose peak something other than the process's own overhead makes: wide layers, a long
# context, a large vocabulary (as in scripts/bench_planner.py, smaller).
PEAK_SHAPES = {
    "wide": (["model.n_layer=2", "model.n_head=8", "model.n_embd=768", "model.seq_len=256"], 256, 8),
    "long context": (["model.n_layer=2", "model.n_head=4", "model.n_embd=256", "model.seq_len=1024"], 256, 4),
    "big vocabulary": (["model.n_layer=2", "model.n_head=4", "model.n_embd=256", "model.seq_len=256"], 32768, 8),
}


@pytest.mark.parametrize("shape", PEAK_SHAPES)
def test_the_memory_model_predicts_the_measured_peak_within_15_percent(shape: str) -> None:
    from localtrain.memory import memory_estimate

    overrides, vocab, micro = PEAK_SHAPES[shape]
    c = cfg.resolve("python-stdlib", overrides)
    spec = {"backend": "torch", "device": "cpu", "threads": 0, "vocab_size": vocab, "timed_steps": 1,
            "model": dataclasses.asdict(c.model), "rank_batch": micro}
    probe = tuner.Probe(spec)
    try:
        m = probe.measure(Choice("float32", False, micro), None)
    finally:
        probe.close()
    est = memory_estimate(c.model, vocab, micro, "float32", "cpu")
    assert m.status == "ok", m.detail
    # The step's own terms are most of the prediction: a dropped or doubled one shows.
    assert est.total - est.terms["overhead"] > 0.5 * est.total
    assert abs(est.total - m.peak_bytes) <= 0.15 * m.peak_bytes, (est.terms, m.peak_bytes)


def test_out_of_memory_and_a_dead_measuring_process_are_reported_and_skipped(tmp_path, machine, monkeypatch) -> None:
    c = config("model.seq_len=512")
    spec = {"backend": "torch", "device": "cpu", "threads": 1, "vocab_size": 32768, "rank_batch": 8,
            "model": dataclasses.asdict(c.model)}
    # A process limited to 1 GiB (the interpreter and torch hold about 0.4 of it) cannot hold 8
    # sequences of 32,768 logits by 512 positions (0.5 GiB a copy in float32); one sequence fits.
    probe = tuner.Probe({**spec, "memory_limit": 2**30})
    try:
        big = probe.measure(Choice("float32", False, 8), None)
        small = probe.measure(Choice("float32", False, 1), None)
    finally:
        probe.close()
    assert big.status == "oom" and "allocate" in big.detail
    assert small.status == "ok" and small.step_s > 0

    monkeypatch.setattr(tuner, "PROBE", [str(Path(__file__).with_name("probe_dies.py"))])
    monkeypatch.setenv("PROBE_DIES_ON", json.dumps([["bfloat16", False, 8]]))
    events: list = []
    found = tuner.tune(config("run.compile=off"), machine, VOCAB, tmp_path, events.append)
    dead = [m for m in found.measured if m.choice == Choice("bfloat16", False, 8)]
    assert dead and dead[0].status == "crashed" and "killed by signal 9" in dead[0].detail
    assert any(e.status == "crashed" for e in events if e.stage == "measured")
    # The measuring process was started again for the rest, and the run still gets a plan.
    timed = [m.status for m in found.measured if m.choice.dtype == "float32"]
    assert len(timed) >= 2 and all(s in ("ok", "slower") for s in timed)
    assert plan(config("run.compile=off"), machine, VOCAB, tuned=found).dtype == "float32"


def test_explicit_settings_win_and_leave_nothing_to_measure(tmp_path, machine) -> None:
    explicit = config("train.dtype=bfloat16", "run.compile=off", "train.micro_batch_size=2")
    assert not tuner.wanted(explicit, resumed=False)
    p = plan(explicit, machine, VOCAB)
    assert (p.dtype, p.compile, p.micro_batch_size, p.grad_accum_steps, p.decided_by) == (
        "bfloat16", False, 2, 4, "explicit")
    # One explicit setting narrows what is timed to it.
    assert {c.dtype for c in candidates(config("train.dtype=float32"), machine, VOCAB)} == {"float32"}
    assert not tuner.wanted(config("run.autotune=off"), resumed=False)
    assert not tuner.wanted(config(), resumed=True)


def test_a_run_tunes_once_and_its_resume_keeps_the_choices(tmp_path, code_corpus, cache_dir) -> None:
    shape = [*SHAPE, "run.compile=off", "train.eval_every=0", "train.sample_every=0", "train.checkpoint_every=10"]
    args = ["run", "--data", str(code_corpus), "--run-dir", "r", "--plain", *sets(shape)]
    first = localtrain([*args, "--max-steps", "10"], tmp_path, cache_dir)
    assert first.returncode == 0, first.stderr
    assert "tune: " in first.stdout
    events = read_jsonl(tmp_path / "r" / "events.jsonl")
    plan_a = next(e for e in events if e["type"] == "plan")
    assert plan_a["decided_by"] in ("measured", "measured (cached)")
    first_plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    assert first_plan["candidates"]
    first_sample_dtype = first_plan["sample_dtype"]
    resumed = localtrain(["run", "--resume", "--run-dir", "r", "--max-steps", "12", "--plain"], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr
    later = read_jsonl(tmp_path / "r" / "events.jsonl")[len(events):]
    assert not any(e["type"] == "tune" for e in later)
    plan_b = next(e for e in later if e["type"] == "plan")
    assert plan_b["decided_by"] == "resumed"
    assert [plan_b[k] for k in ("dtype", "compiled", "micro_batch_size")] == [
        plan_a[k] for k in ("dtype", "compiled", "micro_batch_size")]
    # The live samples' dtype too: plan.json of the resumed run repeats the first run's.
    assert json.loads((tmp_path / "r" / "plan.json").read_text())["sample_dtype"] == first_sample_dtype
