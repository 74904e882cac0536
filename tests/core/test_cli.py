"""`localtrain run` end to end, and every bad input: a clear message, nothing written over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import FORCED, TINY, localtrain, read_jsonl, sets
from localtrain.cli import main


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def tiny_run(data: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(data), "--plain", *sets(TINY), *extra]


def test_the_default_run_trains_on_the_stdlib_prints_samples_and_learns(tmp_path, cache_dir) -> None:
    # `localtrain run` with nothing but a step bound: the python-stdlib preset on the CPU.
    result = localtrain(["run", "--max-steps", "100", *sets(FORCED)], tmp_path, cache_dir, timeout=600)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("python-stdlib-")
    events = read_jsonl(run_dir / "events.jsonl")
    plan = next(e for e in events if e["type"] == "plan")
    # The dtype is the planner's to choose (float32, or bfloat16 where the CPU computes it);
    # the run must train in the one it planned.
    assert (plan["backend"], plan["device"]) == ("torch", "cpu")
    assert plan["dtype"] in ("float32", "bfloat16")
    state = json.loads((run_dir / "checkpoints/step-00000100/state.json").read_text())
    assert state["backend"]["dtype"] == plan["dtype"]
    samples = [e for e in events if e["type"] == "sample"]
    assert [s["step"] for s in samples][:3] == [50, 50, 50]
    assert {s["prompt"] for s in samples} == {"def ", "import ", "class "}
    assert all(s["tokens"] > 0 for s in samples)
    # The sample is printed as it arrives.
    assert "sample step 50 | 'def ' ->" in result.stdout
    evals = {e["step"]: e["val_loss"] for e in events if e["type"] == "eval"}
    assert set(evals) == {0, 100}
    assert evals[100] < 0.75 * evals[0]
    for name in ("config.toml", "plan.json", "tokenizer.model", "best/model.safetensors",
                 "checkpoints/step-00000100/COMPLETE"):
        assert (run_dir / name).exists(), name


def test_a_missing_data_path_writes_nothing(in_tmp, capsys) -> None:
    code, _, err = run_main(["run", "--data", "no/such/corpus.txt"], capsys)
    assert code == 2
    assert "no/such/corpus.txt" in err and "--data" in err
    assert not (in_tmp / "runs").exists()


def test_an_empty_corpus_says_what_was_found(in_tmp, capsys) -> None:
    corpus = in_tmp / "corpus"
    corpus.mkdir()
    (corpus / "image.bin").write_bytes(b"\x00\x01\x02")
    code, _, err = run_main(tiny_run(corpus, "--run-dir", "r"), capsys)
    assert code == 2
    assert str(corpus) in err and "skipped" in err


def test_a_corpus_smaller_than_one_batch_says_the_numbers(in_tmp, capsys) -> None:
    corpus = in_tmp / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"f{i}.py").write_text(f"line_{i} = \"of a very small corpus\"\n" * 2)
    code, _, err = run_main(tiny_run(corpus, "--run-dir", "r"), capsys)
    assert code == 2
    assert "one micro-batch needs train.micro_batch_size=8 windows (257 tokens)" in err
    assert "The training split has " in err


def test_non_utf8_files_are_skipped_and_counted(in_tmp, capsys, code_corpus) -> None:
    corpus = in_tmp / "corpus"
    shutil.copytree(code_corpus, corpus)
    (corpus / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (corpus / "blob.py").write_bytes(b"x = 1\x00\x00\n")
    code, out, _ = run_main(tiny_run(corpus, "--run-dir", "r", "--max-steps", "2"), capsys)
    assert code == 0
    warnings = [e for e in read_jsonl(in_tmp / "r" / "events.jsonl") if e["type"] == "warning"]
    skipped = [w for w in warnings if w["code"] == "skipped_files"]
    assert len(skipped) == 1 and "2 " in skipped[0]["message"]
    assert "latin1.py" in skipped[0]["message"] and "blob.py" in skipped[0]["message"]
    prepare_done = [e for e in read_jsonl(in_tmp / "r" / "events.jsonl") if e["type"] == "prepare"][-1]
    assert prepare_done["skipped"] == 2


def test_an_unknown_key_fails_with_a_suggestion(in_tmp, capsys) -> None:
    code, _, err = run_main(["run", "--set", "train.learning_rate=1e-3"], capsys)
    assert code == 2
    assert "`train.learning_rate`" in err and "Did you mean" in err
    assert not (in_tmp / "runs").exists()


def test_a_run_dir_with_another_config_is_not_touched(in_tmp, capsys, code_corpus) -> None:
    code, _, _ = run_main(tiny_run(code_corpus, "--run-dir", "r", "--max-steps", "2"), capsys)
    assert code == 0
    before = {p: p.read_bytes() for p in (in_tmp / "r").rglob("*") if p.is_file()}
    code, _, err = run_main(tiny_run(code_corpus, "--run-dir", "r", "--max-steps", "2",
                                     "--set", "model.n_layer=3"), capsys)
    assert code == 2
    assert "different configuration" in err and "model.n_layer: 2 -> 3" in err and "--resume" in err
    after = {p: p.read_bytes() for p in (in_tmp / "r").rglob("*") if p.is_file()}
    assert after == before
    # The same config without --resume is refused too, since checkpoints exist.
    code, _, err = run_main(tiny_run(code_corpus, "--run-dir", "r", "--max-steps", "2"), capsys)
    assert code == 2 and "already has checkpoints" in err


def test_resume_refuses_a_changed_model_but_accepts_a_longer_schedule(in_tmp, capsys, code_corpus) -> None:
    assert run_main(tiny_run(code_corpus, "--run-dir", "r", "--max-steps", "3"), capsys)[0] == 0
    code, _, err = run_main(["run", "--resume", "--run-dir", "r", "--set", "model.n_embd=64"], capsys)
    assert code == 2 and "model.n_embd: 32 -> 64" in err
    code, _, _ = run_main(["run", "--resume", "--run-dir", "r", "--max-steps", "5", "--plain"], capsys)
    assert code == 0
    events = read_jsonl(in_tmp / "r" / "events.jsonl")
    assert any(e["type"] == "warning" and e["code"] == "config_changed" and "train.max_steps" in e["message"]
               for e in events)
    assert events[-1]["type"] == "done" and events[-1]["step"] == 5


def test_a_truncated_checkpoint_is_skipped_or_refused(in_tmp, capsys, code_corpus) -> None:
    assert run_main(tiny_run(code_corpus, "--run-dir", "r", "--max-steps", "20"), capsys)[0] == 0
    newest = in_tmp / "r" / "checkpoints" / "step-00000020" / "model.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[:1000])
    code, out, _ = run_main(["run", "--resume", "--run-dir", "r", "--max-steps", "25", "--plain"], capsys)
    assert code == 0
    assert "Skipping checkpoint step-00000020" in out and "truncated" in out
    plans = [e for e in read_jsonl(in_tmp / "r" / "events.jsonl") if e["type"] == "plan"]
    assert plans[-1]["resumed_from"] == 10

    # With every checkpoint broken, resuming is refused and the files stay as they are.
    assert run_main(tiny_run(code_corpus, "--run-dir", "s", "--max-steps", "5"), capsys)[0] == 0
    only = in_tmp / "s" / "checkpoints" / "step-00000005" / "optimizer.safetensors"
    only.write_bytes(only.read_bytes()[:-7])
    broken = only.read_bytes()
    code, _, err = run_main(["run", "--resume", "--run-dir", "s"], capsys)
    assert code == 2 and "no complete checkpoint that verifies" in err
    assert only.read_bytes() == broken


def test_resume_without_a_run(in_tmp, capsys, code_corpus) -> None:
    code, _, err = run_main(["run", "--resume"], capsys)
    assert code == 2 and "no run to resume" in err and "--resume auto" in err
    code, _, _ = run_main(tiny_run(code_corpus, "--resume", "auto", "--run-dir", "fresh", "--max-steps", "2"), capsys)
    assert code == 0 and (in_tmp / "fresh" / "checkpoints" / "step-00000002" / "COMPLETE").exists()


def test_resume_finds_the_latest_run_on_its_own(in_tmp, capsys, code_corpus) -> None:
    assert run_main(tiny_run(code_corpus, "--max-steps", "2"), capsys)[0] == 0
    (run_dir,) = (in_tmp / "runs").iterdir()
    code, out, _ = run_main(["run", "--resume", "--max-steps", "4", "--plain"], capsys)
    assert code == 0
    assert read_jsonl(run_dir / "events.jsonl")[-1]["step"] == 4


def test_a_second_process_on_the_same_run_dir_is_refused(in_tmp, capsys, code_corpus) -> None:
    from localtrain.rundir import claim
    from localtrain.runner import run_lock

    claim(in_tmp / "r")  # the directory as the first process made it
    with run_lock(in_tmp / "r"):
        code, _, err = run_main(tiny_run(code_corpus, "--run-dir", "r", "--max-steps", "2"), capsys)
    assert code == 2 and "is in use by localtrain process" in err
