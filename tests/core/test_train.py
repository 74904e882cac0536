"""The loop's stopping rules, evaluation bookkeeping, divergence, and the console."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest

from conftest import TINY, read_jsonl, sets
from loop_helpers import make_trainer

from localtrain import events as ev
from localtrain.backends import torch_attention
from localtrain.backends.torch_backend import TorchBackend
from localtrain.cli import main
from localtrain.sampling import generate
from localtrain.console import ConsoleView, describe


def run(code_corpus: Path, *extra: str) -> int:
    return main(["run", "--data", str(code_corpus), "--run-dir", "r", "--plain", *sets(TINY), *extra])


def test_max_tokens_sets_the_schedule_length(in_tmp, code_corpus, capsys) -> None:
    # 8 sequences x 32 tokens = 256 tokens a step: 2,560 tokens are 10 steps.
    assert run(code_corpus, "--set", "train.max_steps=0", "--set", "train.max_tokens=2560") == 0
    events = read_jsonl(in_tmp / "r" / "events.jsonl")
    plan = next(e for e in events if e["type"] == "plan")
    assert plan["total_steps"] == 10 and plan["tokens_per_step"] == 256
    assert events[-1]["type"] == "done" and events[-1]["step"] == 10 and events[-1]["tokens"] == 2560


def test_max_time_stops_with_a_checkpoint(in_tmp, code_corpus, capsys) -> None:
    assert run(code_corpus, "--max-steps", "1000000", "--max-time", "0.03") == 0
    done = read_jsonl(in_tmp / "r" / "events.jsonl")[-1]
    assert done["reason"] == "max_time" and 0 < done["step"] < 1_000_000
    assert (in_tmp / done["checkpoint"] / "COMPLETE").exists()
    assert "Continue with: localtrain run --resume --run-dir r" in capsys.readouterr().out


def test_early_stopping_after_patience_evaluations(in_tmp, code_corpus, capsys) -> None:
    # A learning rate too small to move the val loss by the required 0.5 nats.
    assert run(code_corpus, "--max-steps", "50", "--set", "train.lr=1e-9", "--set", "train.eval_every=1",
               "--set", "train.early_stop_patience=3", "--set", "train.early_stop_min_delta=0.5") == 0
    events = read_jsonl(in_tmp / "r" / "events.jsonl")
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 1, 2, 3, 4]
    assert [e["is_best"] for e in evals] == [False, True, False, False, False]
    assert events[-1]["reason"] == "early_stop" and events[-1]["step"] == 4
    best = (in_tmp / "r" / "best" / "state.json").read_text()
    assert '"step": 1' in best


def test_best_tracks_the_lowest_val_loss(in_tmp, code_corpus, capsys) -> None:
    assert run(code_corpus, "--max-steps", "30") == 0
    events = read_jsonl(in_tmp / "r" / "events.jsonl")
    evals = [e for e in events if e["type"] == "eval" and e["step"] > 0]
    lowest = min(evals, key=lambda e: e["val_loss"])
    assert lowest["is_best"] and events[-1]["best_val_loss"] == lowest["val_loss"]
    state = json.loads((in_tmp / "r" / "best" / "state.json").read_text())
    assert state["step"] == lowest["step"] and state["val_loss"] == lowest["val_loss"]
    # bits per byte is the same loss over the bytes of the predicted text.
    e = evals[-1]
    assert e["val_bpb"] == pytest.approx(e["val_loss"] * e["val_tokens"] / (e["val_bytes"] * 0.6931471805599453))


def test_a_diverging_run_stops_with_a_clear_error(in_tmp, code_corpus, capsys) -> None:
    code = run(code_corpus, "--max-steps", "20", "--set", "train.lr=1e39", "--set", "train.warmup_steps=0")
    assert code == 1
    err = capsys.readouterr().err
    assert "Training diverged: the loss became nan at step" in err and "--set train.lr=" in err
    events = read_jsonl(in_tmp / "r" / "events.jsonl")
    assert events[-1]["type"] == "error"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_resumes_exactly(in_tmp, code_corpus, cache_dir, capsys, dtype) -> None:
    # A flat rate after warmup: the run stopped at step 10 follows the 12-step schedule.
    args = ["--data", str(code_corpus), "--plain", *sets(TINY + [f"train.dtype={dtype}", "train.min_lr_ratio=1.0"])]
    assert main(["run", *args, "--run-dir", "straight", "--max-steps", "12"]) == 0
    assert main(["run", *args, "--run-dir", "r", "--max-steps", "10"]) == 0
    plan = next(e for e in read_jsonl(in_tmp / "r" / "events.jsonl") if e["type"] == "plan")
    assert plan["dtype"] == dtype
    assert main(["run", "--resume", "--run-dir", "r", "--max-steps", "12", "--plain"]) == 0
    straight, resumed = (read_jsonl(in_tmp / d / "events.jsonl") for d in ("straight", "r"))
    assert [e["dtype"] for e in resumed if e["type"] == "plan"] == [dtype, dtype]
    losses = [{e["step"]: e["loss"] for e in events if e["type"] == "step"} for events in (straight, resumed)]
    assert losses[0] == losses[1] and sorted(losses[1]) == list(range(1, 13))
    final = Path("checkpoints", "step-00000012")
    assert (in_tmp / "r" / final / "model.safetensors").read_bytes() == \
        (in_tmp / "straight" / final / "model.safetensors").read_bytes()
    # float16's loss scale and its growth count carried over the resume; so did the way attention
    # runs, as measured before the stop (the resumed run does not time it again).
    extra = [json.loads((in_tmp / d / final / "state.json").read_text())["backend"]["extra"] for d in ("straight", "r")]
    assert ("grad_scaler" in extra[0]) == (dtype == "float16")
    assert extra[0].get("grad_scaler") == extra[1].get("grad_scaler")
    stopped = json.loads((in_tmp / "r" / "checkpoints" / "step-00000010" / "state.json").read_text())
    assert extra[1]["attention"] == stopped["backend"]["extra"]["attention"] != {}
    # Both runs took it from the measurement cache, where the first one kept it.
    kept = json.loads((cache_dir / torch_attention.KEPT_FILE).read_text())
    assert extra[0]["attention"] == extra[1]["attention"]
    assert extra[0]["attention"][f"8/{dtype}"] in kept.values()


def test_the_live_console_draws_progress_samples_and_the_end() -> None:
    out = io.StringIO()
    view = ConsoleView(stream=out, live=True)
    view(ev.Step(step=5, total_steps=10, loss=2.5, lr=1e-3, grad_norm=1.0, tokens=80, tokens_per_s=1234.0,
                 mfu=0.42, step_time_s=0.1, elapsed_s=0.5, eta_s=0.5, memory_bytes=0))
    view(ev.Eval(step=5, val_loss=2.0, val_ppl=7.39, val_bpb=1.5, val_tokens=8, val_bytes=20,
                 best_val_loss=2.0, is_best=True))
    view(ev.Sample(step=5, prompt="def ", text="main():", tokens=3))
    view(ev.Done(reason="complete", step=10, tokens=160, elapsed_s=1.0, best_val_loss=2.0, checkpoint="c"))
    text = out.getvalue()
    assert "sample at step 5" in text and "def main():" in text
    assert "val loss 2.0000" in text and "ppl 7.39" in text
    assert "done (complete) at step 10" in text
    assert view.live is None


def test_plain_console_logs_every_n_steps() -> None:
    out = io.StringIO()
    view = ConsoleView(stream=out, log_every=5, live=False)
    for n in range(1, 13):
        view(ev.Step(step=n, total_steps=12, loss=1.0, lr=1e-3, grad_norm=1.0, tokens=n, tokens_per_s=1.0,
                     mfu=0.0, step_time_s=0.1, elapsed_s=0.1, eta_s=0.1, memory_bytes=0))
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["5/12", "10/12", "12/12"]


def test_help_lists_every_command(capsys) -> None:
    # With no command `localtrain` opens the dashboard (tests/tui drive it on a terminal).
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("run", "doctor", "prepare", "eval", "sample", "export", "config"))


def test_a_sample_asked_for_at_a_scheduled_step_draws_new_text_and_says_its_seed(tmp_path, code_corpus) -> None:
    # Bug caught: `s` at a sample step repeating the scheduled samples (same seeds), so that
    # nothing seems to happen.
    found: list[ev.Sample] = []
    trainer = make_trainer(code_corpus, tmp_path / "run", lambda e: found.append(e) if isinstance(e, ev.Sample)
                           else None, TorchBackend("cpu", "float32"), ["train.sample_tokens=24"])
    trainer.state.step = 10  # a scheduled sample step (TINY samples every 10)
    trainer.sample()
    scheduled = list(found)
    found.clear()
    trainer.sample()
    assert [(s.seed, s.text) for s in found] == [(s.seed, s.text) for s in scheduled]  # reproducible
    assert not any(s.manual for s in scheduled)
    found.clear()
    trainer.control = lambda: ["sample"]  # what the dashboard's `s` sends
    trainer.obey_controller()
    assert len(found) == len(scheduled) and all(s.manual and s.step == 10 for s in found)
    assert {s.seed for s in found}.isdisjoint({s.seed for s in scheduled})
    assert [s.text for s in found] != [s.text for s in scheduled]
    # The console says it was asked for, and with which seed.
    assert f"sample step 10 (asked for, seed {found[0].seed})" in describe(found[0])


def test_live_samples_decode_in_the_dtype_the_plan_names(tmp_path, code_corpus) -> None:
    # Bug caught: the plan's sample_dtype (float32 where the tuner timed it faster a token) not
    # reaching the decoder, so a bfloat16 run's live samples stay in bfloat16.
    found: list[ev.Sample] = []
    trainer = make_trainer(code_corpus, tmp_path / "run", lambda e: found.append(e) if isinstance(e, ev.Sample)
                           else None, TorchBackend("cpu", "bfloat16"), ["train.sample_tokens=64", "train.temperature=1.5"])
    trainer.plan = dataclasses.replace(trainer.plan, sample_dtype="float32")
    trainer.sample()
    t, data = trainer.config.train, trainer.data

    def drawn(sample: ev.Sample, dtype: str | None) -> str:
        out = generate(trainer.backend, data.encode(sample.prompt) or [data.eos_id], t.sample_tokens,
                       t.temperature, t.top_k, sample.seed, dtype=dtype)
        return data.decode(out[: out.index(data.eos_id)] if data.eos_id in out else out)

    assert [s.text for s in found] == [drawn(s, "float32") for s in found]
    assert [s.text for s in found] != [drawn(s, None) for s in found]  # bfloat16 draws other text here


def test_a_sample_asked_for_in_a_sharded_run_is_taken_at_the_next_agreement_with_its_seed(tmp_path,
                                                                                      code_corpus) -> None:
    # Bug caught: the seed of a sample asked for lost on its way through the ranks' agreement
    # (every rank drawing the scheduled seeds, or a seed of its own).
    found: list[ev.Sample] = []
    commands = [[], ["sample"]]
    trainer = make_trainer(code_corpus, tmp_path / "run", lambda e: found.append(e) if isinstance(e, ev.Sample)
                           else None, TorchBackend("cpu", "float32"),
                           ["train.max_steps=3", "train.sample_every=0", "train.eval_every=0", "train.sample_tokens=8"])
    trainer.control = lambda: commands.pop() if commands else []
    trainer.every_rank = True  # as a sharded backend over several ranks makes it
    trainer.run()
    asked = [s for s in found if s.manual]
    assert asked and len(asked) == len(found) and trainer.sample_seed is None
    assert [s.seed for s in asked] == [asked[0].seed + i for i in range(len(asked))]
