"""Progressive phases: exact phase ends in the manifest, training that starts on phase 1 while
the rest is prepared, waits for a phase that is late, and resumes exactly after SIGKILL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from conftest import CORPUS_MODULES, STDLIB, TINY, last_step, localtrain, read_jsonl, sets, start_localtrain, step_losses, wait_for
from localtrain import config as cfg, events as ev, hardware, planner
from localtrain.data.prepare import iter_documents, prepare
from localtrain.data.tokenizer import Tokenizer
from localtrain.backends import make_backend
from localtrain.train import TrainData, Trainer

PHASED = [o for o in TINY if not o.startswith("data.document_bytes")] + [
    "data.document_bytes=1024", "data.val_fraction=0.2", "data.tokenizer_sample_bytes=100000",
]


def numbered_corpus(directory: Path, files: int, file_bytes: int) -> Path:
    """Text files of standard-library lines, each line numbered so that no document repeats."""
    lines = [line for name in CORPUS_MODULES for line in (STDLIB / name).read_text().splitlines()]
    directory.mkdir()
    i = 0
    for f in range(files):
        out, size = [], 0
        while size < file_bytes:
            line = f"{i:08d} {lines[i % len(lines)]}\n"
            out.append(line)
            size += len(line)
            i += 1
        (directory / f"part-{f:04d}.txt").write_text("".join(out))
    return directory


def test_each_phase_ends_after_the_tokens_of_its_first_documents(tmp_path: Path, code_corpus: Path) -> None:
    config = cfg.resolve("tiny-shakespeare", [*PHASED, f"data.source={code_corpus}", "data.phases=[10,60,100000]"])
    events: list[ev.Event] = []
    prepared = prepare(config.data, events.append, threads=1, out_dir=tmp_path / "p")
    tok = Tokenizer.load(prepared.tokenizer_path)
    # Counted apart from the preparation: the kept documents in order, encoded one by one.
    totals = {"train": 0, "val": 0}
    after: dict[int, dict[str, int]] = {}
    for n, (doc, split) in enumerate(iter_documents(config.data, lambda e: None, threads=1), start=1):
        totals[split] += len(tok.encode(doc.text)) + 1  # each document ends with eos
        after[n] = dict(totals)
    phases = prepared.phases
    assert [p["documents"] for p in phases] == [10, 60, 100000, None] and all(p["ready"] for p in phases)
    for phase, n in ((0, 10), (1, 60)):
        assert (phases[phase]["train_tokens"], phases[phase]["val_tokens"]) == (after[n]["train"], after[n]["val"])
    assert after[10]["val"] > 0 and after[60]["train"] > after[10]["train"]
    for phase in (2, 3):  # more documents than the corpus has, and every document
        assert (phases[phase]["train_tokens"], phases[phase]["val_tokens"]) == (totals["train"], totals["val"])
    assert totals["train"] == prepared.train_tokens
    assert any(isinstance(e, ev.Warning) and e.code == "short_phases" and "100,000" in e.message for e in events)
    ready = [e.message for e in events if isinstance(e, ev.Prepare) and e.stage == "phase"]
    assert len(ready) == 4 and ready[0].startswith("Phase 1 of 4 is ready: the first 10 documents")
    whole = np.asarray(prepared.load("train"))
    part = np.asarray(prepared.load("train", limit=phases[1]["train_tokens"]))
    assert np.array_equal(part, whole[: phases[1]["train_tokens"]])


class LatePhases:
    """Two phases over one token array; the second is written when `release` is called."""

    def __init__(self, tokens: np.ndarray, first: int, late: bool) -> None:
        self.all, self.ends, self.written = tokens, [first, len(tokens)], 1 if late else 2

    def __len__(self) -> int:
        return 2

    def ready(self, phase: int) -> bool:
        return phase < self.written

    def tokens(self, phase: int) -> np.ndarray:
        assert self.ready(phase)
        return self.all[: self.ends[phase]]

    def describe(self, phase: int) -> str:
        return f"Waiting for phase {phase + 1}."

    def release(self) -> None:
        self.written = 2


def train_on(phases: LatePhases, run_dir: Path, emit) -> None:
    config = cfg.resolve("tiny-shakespeare", [*TINY, "train.max_steps=20", "train.eval_every=0",
                                              "train.sample_every=0", "train.checkpoint_every=0", "run.threads=1"])
    plan = planner.plan(config, hardware.probe(), vocab_size=50)
    backend = make_backend(plan)
    backend.build(config.model, 50, config.train.seed)
    backend.configure_optimizer(config.train)
    val = np.random.default_rng(1).integers(0, 50, 2000).astype(np.uint16)
    data = TrainData(train_tokens=phases, val_tokens=val, token_bytes=np.ones(50, dtype=np.int64),
                     encode=lambda text: [], decode=lambda ids: "", eos_id=0, tokenizer_sha256="", vocab_size=50)
    Trainer(config, backend, data, run_dir, emit, plan, peak_flops=1e12).run()


def test_the_trainer_waits_for_a_late_phase_and_trains_as_if_it_had_been_ready(tmp_path: Path) -> None:
    tokens = np.random.default_rng(0).integers(0, 50, 20_000).astype(np.uint16)
    first = 2_000  # (2000 - 1) // 32 = 62 windows: 7 steps of 8, and the 8th needs phase 2
    ready: list[ev.Event] = []
    train_on(LatePhases(tokens, first, late=False), tmp_path / "ready", ready.append)

    late = LatePhases(tokens, first, late=True)
    seen: list[ev.Event] = []

    def emit(event: ev.Event) -> None:
        seen.append(event)
        if isinstance(event, ev.Status) and event.state == "waiting":
            threading.Timer(0.5, late.release).start()  # the preparation writes phase 2 later

    train_on(late, tmp_path / "late", emit)
    order = [e.state if isinstance(e, ev.Status) else e.step for e in seen if isinstance(e, (ev.Status, ev.Step))]
    waiting = order.index("waiting")
    assert order[waiting - 1] == (first - 1) // 32 // 8 and order[waiting + 1] == "running"
    assert order[waiting + 2] == 8 and order.count("waiting") == 1
    losses = [e.loss for e in seen if isinstance(e, ev.Step)]
    assert losses == [e.loss for e in ready if isinstance(e, ev.Step)] and len(losses) == 20


def prepared_manifest(cache: Path) -> dict | None:
    found = list(cache.glob("data/*/manifest.json"))
    return json.loads(found[0].read_text()) if found else None


def test_training_starts_while_later_phases_are_prepared_and_resumes_exactly(tmp_path: Path) -> None:
    corpus = numbered_corpus(tmp_path / "corpus", files=300, file_bytes=200_000)  # 60 MB
    cache = tmp_path / "cache"  # a fresh cache: the preparation starts from nothing
    args = ["run", "--preset", "tiny-shakespeare", "--data", str(corpus), "--max-steps", "200",
            *sets([*PHASED, "data.phases=[30,15000]", "run.threads=1"])]
    proc = start_localtrain([*args, "--run-dir", "a"], tmp_path, cache)
    wait_for(lambda: last_step(tmp_path / "a") >= 1, timeout=180, proc=proc)
    at_first_step = prepared_manifest(cache)
    assert at_first_step["phases"][0]["ready"] and not at_first_step["complete"]
    wait_for(lambda: last_step(tmp_path / "a") >= 25, timeout=180, proc=proc)  # past step 20's checkpoint
    proc.kill()
    proc.wait()
    # The preparation process notices that its run is gone and stops after a commit.
    time.sleep(2.0)
    settled = prepared_manifest(cache)
    time.sleep(1.0)
    assert prepared_manifest(cache)["splits"] == settled["splits"] and not settled["complete"]

    resumed = localtrain(["run", "--resume", "--run-dir", "a"], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr
    fresh = localtrain([*args, "--run-dir", "b"], tmp_path, cache)  # on the data prepared so far
    assert fresh.returncode == 0, fresh.stderr

    a, b = step_losses(tmp_path / "a"), step_losses(tmp_path / "b")
    assert sorted(a) == list(range(1, 201)) and a == b
    # 200 steps of 8 windows walk past phase 1's windows into phase 2.
    assert 200 * 8 > (at_first_step["phases"][0]["train_tokens"] - 1) // 32
    evals = [{e["step"]: e["val_loss"] for e in read_jsonl(tmp_path / d / "events.jsonl") if e["type"] == "eval"}
             for d in "ab"]
    assert evals[0] == evals[1] and len(evals[0]) == 21  # one validation set, phase 1's, throughout
    plans = [e for e in read_jsonl(tmp_path / "b" / "events.jsonl") if e["type"] == "plan"]
    assert plans[0]["train_tokens"] == at_first_step["phases"][0]["train_tokens"]
