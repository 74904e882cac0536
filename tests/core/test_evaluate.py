"""`localtrain eval`: the scored tokens, bytes and words, checked against independent computations."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import llama_reference
from conftest import SHARED_DATA, STDLIB, TINY, localtrain, need, read_jsonl, sets
from localtrain import evaluate, quality
from localtrain.config import DataConfig, ModelConfig
from localtrain.data.prepare import prepare
from localtrain.data.tokenizer import Tokenizer, train_tokenizer
from localtrain.errors import CheckpointError, DataError, LocaltrainError
from localtrain.export import load_source
from localtrain.sample import build_backend

LN2 = math.log(2.0)
# Real text no test run trains on.
HELD_OUT = STDLIB / "json" / "decoder.py"


def eval_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    return p.parse_args(list(argv))


# -- counting conventions -----------------------------------------------------------------


def test_word_count_convention() -> None:
    assert evaluate.count_words("a b\nc  d\n") == 4 + 2  # four words, two line ends
    assert evaluate.count_words("  \n\n") == 2
    assert evaluate.count_words("") == 0
    # A word that began before the text is not counted again.
    assert evaluate.count_words("yz a", after="x") == 1
    assert evaluate.count_words("yz a", after=" ") == 2
    assert evaluate.count_words(" yz a", after="x") == 2


def test_wikitext2_test_word_count() -> None:
    path = need(SHARED_DATA / "wikitext-2" / "test.txt")
    text = path.read_text(encoding="utf-8")
    # The published count of the tokenized test split: words plus one <eos> per line.
    assert evaluate.count_words(text) == 245_569
    assert evaluate.count_words(text) == len(text.split()) + len(text.splitlines())


@pytest.mark.parametrize("targets,seq_len,stride", [(1, 8, 4), (8, 8, 3), (9, 8, 8), (100, 8, 3), (57, 16, 16),
                                                    (40, 7, 1)])
def test_each_token_scored_once_with_its_context(targets: int, seq_len: int, stride: int) -> None:
    seen = np.zeros(targets, dtype=int)
    for begin, end, first in evaluate.windows(targets, seq_len, stride):
        assert end - begin == min(seq_len, targets) and begin <= first < end
        seen[first:end] += 1
        if begin > 0:
            # Every token after the first window sees at least seq_len - stride tokens before it.
            assert first - begin >= seq_len - stride
    assert (seen == 1).all()


# -- bits per byte: tokenizer-independent on a known answer -------------------------------


@pytest.fixture(scope="module")
def two_tokenizers() -> tuple[str, Tokenizer, Tokenizer]:
    text = (STDLIB / "textwrap.py").read_text(encoding="utf-8")[:20_000]
    quiet = lambda event: None  # noqa: E731
    char = train_tokenizer([text], DataConfig(tokenizer="char", character_coverage=1.0), quiet)
    bpe = train_tokenizer([text], DataConfig(tokenizer="bpe", vocab_size=500, character_coverage=1.0), quiet)
    return text, char, bpe


def piece_bytes(tok: Tokenizer, i: int) -> bytes:
    piece = tok.piece(i)
    if re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
        return bytes([int(piece[3:5], 16)])
    if piece in ("<unk>", "<s>", "</s>"):
        return b""
    return piece.replace("\u2581", " ").encode("utf-8")


def test_bits_per_byte_is_tokenizer_independent(two_tokenizers) -> None:
    """An exact byte model: each byte costs -ln p(byte), whatever token holds it.

    Its total over the text is known without any tokenizer, so bits per byte must equal
    the byte distribution's cross-entropy for the char and the bpe tokenizer alike,
    while their token perplexities differ.
    """
    text, char, bpe = two_tokenizers
    raw = text.encode("utf-8")
    counts = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256)
    cost = np.where(counts > 0, -np.log(np.maximum(counts, 1) / len(raw)), 0.0)  # nats per byte value
    expected_bpb = float(cost[np.frombuffer(raw, dtype=np.uint8)].sum()) / (LN2 * len(raw))

    results = []
    for tok in (char, bpe):
        assert tok.decode(tok.encode(text)) == text
        table = np.array([cost[list(piece_bytes(tok, i))].sum() for i in range(tok.vocab_size)])
        exact_model = lambda x, y, table=table: table[y]  # noqa: E731
        r = evaluate.evaluate_text(exact_model, tok, text, seq_len=16, stride=5)
        assert r.tokens == len(tok.encode(text)) and r.bytes == len(raw)
        assert r.bpb == pytest.approx(expected_bpb, rel=1e-12)
        assert r.bpb == pytest.approx(r.total_nats / (LN2 * len(raw)), rel=1e-15)
        results.append(r)
    c, b = results
    assert c.tokens > 2 * b.tokens  # the bpe pieces are longer
    assert b.ppl > 2 * c.ppl  # so each one costs more
    assert c.word_ppl == pytest.approx(b.word_ppl, rel=1e-12)  # the words are the same too


def test_uniform_model_known_answer(two_tokenizers) -> None:
    """A real torch model with all-zero weights gives every (padded) row the same logit."""
    from localtrain.backends.torch_backend import TorchBackend

    text, _, bpe = two_tokenizers
    text = text[:3000]
    model = ModelConfig(n_layer=1, n_head=2, n_embd=16, seq_len=32, pad_vocab_multiple=64)
    backend = TorchBackend("cpu", "float32", 0, False)
    backend.build(model, bpe.vocab_size, 0)
    weights, _ = backend.state_arrays()
    backend.load_state_arrays({k: np.zeros_like(v) for k, v in weights.items()}, None, 0)
    rows = -(-bpe.vocab_size // 64) * 64
    r = evaluate.evaluate_text(backend.token_losses, bpe, text, model.seq_len, 32)
    n = len(bpe.encode(text))
    assert r.tokens == n
    assert r.total_nats == pytest.approx(n * math.log(rows), rel=1e-6)
    assert r.bpb == pytest.approx(n * math.log(rows) / (LN2 * len(text.encode("utf-8"))), rel=1e-6)


# -- a trained checkpoint against plain torch -----------------------------------------------


def test_eval_matches_plain_torch(trained_run: Path) -> None:
    source = load_source(trained_run, "best")
    tok = Tokenizer.load(source.tokenizer_path)
    text = HELD_OUT.read_text(encoding="utf-8")[:2500]
    seq_len, stride = source.model.seq_len, 12
    backend = build_backend(source, "torch", "cpu")
    r = evaluate.evaluate_text(backend.token_losses, tok, text, seq_len, stride)

    w = load_file(str(source.origin / "model.safetensors"))
    ids = [tok.eos_id, *tok.encode(text)]
    L = len(ids) - 1
    assert L > seq_len  # sliding windows, all seq_len long
    begins = [*range(0, L - seq_len, stride), L - seq_len]
    scored = llama_reference.token_nats(w, source.model, np.array([ids[b : b + seq_len] for b in begins]),
                                        np.array([ids[b + 1 : b + seq_len + 1] for b in begins]))
    nats: dict[int, float] = {}
    for begin, window in zip(begins, scored):
        for j in range(begin, begin + seq_len):
            nats.setdefault(j, float(window[j - begin]))
    assert sorted(nats) == list(range(L)) and r.tokens == L
    total = sum(nats.values())
    assert r.loss == pytest.approx(total / L, abs=1e-6)
    assert r.bytes == len(text.encode("utf-8"))
    assert r.bpb == pytest.approx(r.total_nats / (LN2 * r.bytes), rel=1e-12)
    assert r.word_ppl == pytest.approx(math.exp(r.total_nats / evaluate.count_words(text)), rel=1e-12)


def test_the_trainers_eval_figures_are_its_checkpoint_scored_independently(trained_run: Path) -> None:
    """Each evaluation at a checkpointed step, recomputed apart from the trainer: its validation
    windows (eval_batches x micro_batch_size windows of seq_len + 1 tokens, spread evenly from the
    first window of the prepared val split to the last), scored by the float64 reference on the
    checkpoint's weights, their bytes counted from the tokenizer's pieces."""
    events = read_jsonl(trained_run / "events.jsonl")
    run = load_source(trained_run).run_config
    seq_len = run.model.seq_len
    plan = next(e for e in events if e["type"] == "plan")
    assert plan["dtype"] == "float32"  # the comparison below is at float32 precision
    prepared = prepare(run.data, lambda e: None)
    val = np.asarray(prepared.load("val"), dtype=np.int64)
    tok = Tokenizer.load(trained_run / "tokenizer.model")
    nbytes = np.array([len(piece_bytes(tok, i)) for i in range(tok.vocab_size)])

    windows = (len(val) - 1) // seq_len
    count = min(windows, run.train.eval_batches * plan["micro_batch_size"])
    starts = [seq_len * round(i * (windows - 1) / (count - 1)) for i in range(count)]
    x = np.stack([val[s : s + seq_len] for s in starts])
    y = np.stack([val[s + 1 : s + seq_len + 1] for s in starts])

    checked = 0
    for e in (e for e in events if e["type"] == "eval"):
        path = trained_run / "checkpoints" / f"step-{e['step']:08d}" / "model.safetensors"
        if not path.exists():
            continue
        nats = llama_reference.token_nats(load_file(str(path)), run.model, x, y)
        assert e["val_tokens"] == y.size
        assert e["val_bytes"] == int(nbytes[y].sum())
        assert e["val_loss"] == pytest.approx(float(nats.mean()), abs=1e-5)
        assert e["val_bpb"] == pytest.approx(float(nats.sum()) / (LN2 * e["val_bytes"]), rel=1e-5)
        checked += 1
    assert checked == 2  # steps 10 and 20


def test_the_trainers_word_and_sample_figures(trained_run: Path) -> None:
    events = read_jsonl(trained_run / "events.jsonl")
    evals = [e for e in events if e["type"] == "eval"]
    assert evals
    for e in evals:
        total = e["val_loss"] * e["val_tokens"]
        assert e["val_words"] > 0
        assert e["val_word_ppl"] == pytest.approx(math.exp(total / e["val_words"]), rel=1e-9)
        assert e["best_metric"] == "val_loss"
    samples = [e for e in events if e["type"] == "sample"]
    assert samples
    code = quality.is_code(load_source(trained_run).run_config.data)
    assert code  # the preset reads *.py files only
    for s in samples:
        want = quality.sample_quality(s["text"], code, s["prompt"]).to_dict()
        assert {k: s[k] for k in want} == want
    batches = [e for e in events if e["type"] == "sample_quality"]
    assert [b["step"] for b in batches] == sorted({s["step"] for s in samples})
    for b in batches:
        mine = [quality.sample_quality(s["text"], code, s["prompt"]) for s in samples if s["step"] == b["step"]]
        assert b["samples"] == len(mine)
        assert b["collapse_rate"] == pytest.approx(sum(q.collapsed for q in mine) / len(mine))
        assert b["parse_rate"] == pytest.approx(sum(q.parses for q in mine) / len(mine))


def test_best_metric_drives_best_and_early_stop(tmp_path: Path, code_corpus: Path, cache_dir: Path) -> None:
    done = localtrain(
        ["run", "--data", str(code_corpus), "--max-steps", "60", "--run-dir", "run", "--backend", "torch",
         *sets(TINY + ["train.best_metric=val_bpb", "train.early_stop_patience=2", "train.early_stop_min_delta=100"])],
        tmp_path, cache_dir,
    )
    assert done.returncode == 0, done.stderr
    events = read_jsonl(tmp_path / "run" / "events.jsonl")
    evals = [e for e in events if e["type"] == "eval"]
    assert all(e["best_metric"] == "val_bpb" for e in evals)
    # The first evaluation after step 0 is the best; no later one improves by 100 bits per byte.
    assert [e["is_best"] for e in evals] == [False, True, False, False]
    assert evals[-1]["best_value"] == evals[1]["val_bpb"]
    assert events[-1]["reason"] == "early_stop" and events[-1]["step"] == 30
    state = json.loads((tmp_path / "run" / "best" / "state.json").read_text())
    assert state["best_metric_name"] == "val_bpb" and state["val_bpb"] == evals[1]["val_bpb"]

    bad = localtrain(["config", "--set", "train.best_metric=val_bpc"], tmp_path, cache_dir)
    assert bad.returncode == 2 and "train.best_metric" in bad.stderr and "val_bpb" in bad.stderr


# -- the command ----------------------------------------------------------------------------


def test_eval_command_json_on_wikitext(trained_run: Path, tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    path = need(SHARED_DATA / "wikitext-2" / "test.txt")
    monkeypatch.setenv("LOCALTRAIN_DATA", str(SHARED_DATA))
    r = evaluate.run_eval(eval_args(str(trained_run), "--data", "wikitext-2-test", "--stride", "32"))
    text = path.read_text(encoding="utf-8")
    assert r.words == evaluate.count_words(text) == 245_569
    assert r.bytes == path.stat().st_size
    assert r.word_ppl == pytest.approx(math.exp(r.total_nats / r.words), rel=1e-12)
    assert r.bpb == pytest.approx(r.total_nats / (LN2 * r.bytes), rel=1e-12)

    small = tmp_path / "small.txt"
    small.write_text(text[:4000], encoding="utf-8")
    done = localtrain(["eval", str(trained_run), "--checkpoint", "best", "--data", str(small), "--json",
                       "--samples", "3"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["bytes"] == len(text[:4000].encode("utf-8")) and out["words"] == evaluate.count_words(text[:4000])
    assert out["checkpoint"].endswith("best") and out["stride"] == 16
    assert out["samples"]["samples"] == 3 and 0 <= out["samples"]["collapse_rate"] <= 1


def test_bad_inputs(trained_run: Path, tmp_path: Path, two_tokenizers, cache_dir: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        evaluate.run_eval(eval_args(str(trained_run), "--data", str(empty)))

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"byte 3 \(0xe9\) is not valid UTF-8"):
        evaluate.run_eval(eval_args(str(trained_run), "--data", str(latin1)))

    with pytest.raises(DataError, match="no local copy"):
        evaluate.run_eval(eval_args(str(trained_run), "--data", "wikitext-103-test"))
    with pytest.raises(LocaltrainError, match="--stride 99"):
        evaluate.run_eval(eval_args(str(trained_run), "--data", str(HELD_OUT), "--stride", "99"))
    with pytest.raises(LocaltrainError, match="Nothing to evaluate"):
        evaluate.run_eval(eval_args(str(trained_run)))

    # The run's tokenizer swapped for another one: its ids would mean other text.
    other = tmp_path / "run"
    shutil.copytree(trained_run, other)
    (other / "tokenizer.model").write_bytes(two_tokenizers[1].model_bytes)
    with pytest.raises(CheckpointError, match="not the tokenizer"):
        evaluate.run_eval(eval_args(str(other), "--data", str(HELD_OUT)))
    done = localtrain(["eval", str(other), "--data", str(HELD_OUT)], tmp_path, cache_dir)
    assert done.returncode == 2 and "error:" in done.stderr and "tokenizer" in done.stderr


def test_prepared_split(trained_run: Path) -> None:
    r = evaluate.run_eval(eval_args(str(trained_run), "--data", "split:val", "--stride", "32"))
    assert r.tokens > 0 and r.words > 0 and r.bytes > r.tokens
    assert r.bpb == pytest.approx(r.total_nats / (LN2 * r.bytes), rel=1e-12)


def test_char_and_bpe_runs_on_shakespeare(shakespeare: Path, tmp_path: Path, cache_dir: Path) -> None:
    """Different tokenizers, the same bytes: comparable bits per byte, different token perplexities."""
    runs = {}
    for name, extra in (("char", []), ("bpe", ["data.tokenizer=bpe", "data.vocab_size=512"])):
        done = localtrain(["run", "--data", str(shakespeare), "--max-steps", "40", "--run-dir", name,
                           "--backend", "torch", *sets(TINY + ["train.sample_every=0"] + extra)], tmp_path, cache_dir)
        assert done.returncode == 0, done.stderr
        runs[name] = tmp_path / name
    held = tmp_path / "held.txt"
    held.write_text(shakespeare.read_text(encoding="utf-8")[-20_000:], encoding="utf-8")
    c, b = (evaluate.run_eval(eval_args(str(runs[n]), "--data", str(held), "--stride", "32")) for n in ("char", "bpe"))
    print(f"char: {c.tokens} tokens, loss {c.loss:.4f}, ppl {c.ppl:.2f}, bpb {c.bpb:.4f}, word ppl {c.word_ppl:.1f}")
    print(f"bpe:  {b.tokens} tokens, loss {b.loss:.4f}, ppl {b.ppl:.2f}, bpb {b.bpb:.4f}, word ppl {b.word_ppl:.1f}")
    assert c.bytes == b.bytes == len(held.read_bytes()) and c.words == b.words
    assert c.tokens > b.tokens
    # Token perplexities differ by far more than bits per byte do.
    assert abs(math.log(b.ppl / c.ppl)) > 3 * abs(math.log(b.bpb / c.bpb))


def test_samples_beside_a_text_leave_its_figures_unchanged(trained_run: Path, tmp_path: Path, cache_dir: Path) -> None:
    text = tmp_path / "t.py"
    text.write_text("def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n")
    runs = [localtrain(["eval", str(trained_run), "--data", str(text), "--json", *extra], tmp_path, cache_dir)
            for extra in ([], ["--samples", "3"])]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    alone, with_samples = (json.loads(r.stdout) for r in runs)
    assert with_samples["loss"] == alone["loss"] and with_samples["bpb"] == alone["bpb"]
    assert alone["samples"] is None and with_samples["samples"]["samples"] == 3


def test_word_perplexity_says_what_its_words_are(trained_run: Path, tmp_path: Path, cache_dir: Path) -> None:
    # Bug caught: a code model's word perplexity (tens of thousands) printed bare, as if it were
    # comparable with the word-level figures published for prose.
    prose = tmp_path / "note.txt"
    prose.write_text("The garden was quiet in the morning.\nWe planted beans and tomatoes.\n")
    code = tmp_path / "probe.py"
    code.write_bytes(HELD_OUT.read_bytes()[:3000])
    lines = {}
    for name, path in (("prose", prose), ("code", code), ("split", "split:val")):
        done = localtrain(["eval", str(trained_run), "--data", str(path), "--backend", "torch"], tmp_path, cache_dir)
        assert done.returncode == 0, done.stderr
        lines[name] = next(x for x in done.stdout.splitlines() if x.startswith("word perplexity"))
    assert evaluate.PROSE_WORDS in lines["prose"] and "not comparable" not in lines["prose"]
    # A Python file, and the code run's own validation split, are code.
    for name in ("code", "split"):
        assert evaluate.CODE_WORDS in lines[name] and "not comparable with published" in lines[name]
    figures = evaluate.run_eval(eval_args(str(trained_run), "--data", str(code)))
    assert figures.word_ppl_note == evaluate.CODE_WORDS  # in --json too
