"""Text in any script: tokenizer coverage chosen from the corpus, byte fallback, cutting and dedup
of long CJK documents, and a Japanese Wikipedia trained end to end with the bpe preset."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import FORCED, localtrain, read_jsonl, sets
from localtrain.config import DataConfig
from localtrain.data import residue
from localtrain.data.commit import Filters
from localtrain.data.prepared import PreparedData
from localtrain.data.local import open_local, read_file_task
from localtrain.data.stream import run_tasks
from localtrain.data.tokenizer import train_tokenizer
from localtrain.events import Prepare
from wikidumps import LEAKS, corpus_pages, write_dump

# A model small enough that a step takes milliseconds, on the bpe preset's own tokenizer settings.
SMALL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.seq_len=64", "train.batch_size=8",
         "train.eval_batches=2", "train.eval_every=15", "train.sample_every=0", "train.warmup_steps=5",
         "train.lr=3e-3", "train.checkpoint_every=30", "train.log_every=1", "data.val_fraction=0.25",
         "run.autotune=off", *FORCED]


def cleaned(lang: str, directory: Path, copies: int = 1) -> list[str]:
    path = write_dump(lang, directory, pages=corpus_pages(lang, copies))
    source = open_local(path, [], [], 1 << 16)
    return [d.text for result, _ in run_tasks(source.tasks(None), 1) for d in result.docs]


@pytest.mark.parametrize("lang, coverage", [("ja", 0.9995), ("zh", 0.9995), ("tr", 1.0), ("vi", 1.0), ("ru", 1.0)])
def test_character_coverage_is_chosen_from_the_script(lang: str, coverage: float, tmp_path: Path) -> None:
    events: list = []
    data = DataConfig(tokenizer="bpe", vocab_size=1200)
    assert data.character_coverage == 0  # the default: chosen from the corpus
    tok = train_tokenizer(cleaned(lang, tmp_path, copies=3), data, events.append)
    assert tok.character_coverage == coverage
    (message,) = [e.message for e in events if isinstance(e, Prepare)]
    assert f"character coverage {coverage:g} (chosen from the sample" in message


def test_a_large_alphabet_without_cjk_is_covered_at_the_large_alphabet_value() -> None:
    # 640 distinct letters (Latin, Greek, Cyrillic, Armenian, Georgian ...), none of them CJK.
    letters = [chr(c) for c in range(0x100, 0x600) if chr(c).isalpha()][:640]
    sample = [" ".join("".join(letters[(i + j) % 640] for j in range(7)) for i in range(0, 640 * 8, 3))]
    tok = train_tokenizer(sample, DataConfig(tokenizer="bpe", vocab_size=4096), lambda e: None)
    assert tok.character_coverage == 0.9995


def test_an_explicit_coverage_wins_and_bytes_spell_what_the_vocabulary_lacks(tmp_path: Path) -> None:
    events: list = []
    data = DataConfig(tokenizer="bpe", vocab_size=1200, character_coverage=0.9999)
    tok = train_tokenizer(cleaned("ja", tmp_path, copies=3), data, events.append)
    assert tok.character_coverage == 0.9999
    assert "character coverage 0.9999 (set in the configuration)" in events[-1].message
    unseen = "鬱蒼とした森で𠮷野家の🍜を食べた。"
    ids = tok.encode(unseen)
    assert tok.decode(ids) == unseen
    assert sum(tok.piece(i).startswith("<0x") for i in ids) >= 4 * 3  # 鬱, 蒼, 𠮷, 🍜 at least, as bytes
    assert tok.unk_id not in ids


@pytest.mark.parametrize("lang", ["ja", "ru"])
def test_long_lines_are_cut_at_sentence_ends_within_the_bound(lang: str, tmp_path: Path) -> None:
    # One line with no newline and (in Japanese) no space, far longer than a document.
    text = "".join(t.replace("\n", "") for t in cleaned(lang, tmp_path, copies=30))
    assert "\n" not in text and len(text.encode()) > 16 * 1024
    path = tmp_path / "one-line.txt"
    path.write_text(text, encoding="utf-8")
    docs = read_file_task(str(path), "one-line.txt", 1024, False).docs
    pieces = [d.text for d in docs]
    assert "".join(pieces) == text
    assert all(512 <= len(p.encode()) <= 1024 for p in pieces[:-1]) and len(pieces[-1].encode()) <= 1024
    ends = "。" if lang == "ja" else ". "
    assert all(p.endswith(ends) for p in pieces[:-1]), [p[-10:] for p in pieces if not p.endswith(ends)]
    # The same text cut again gives the same pieces, and every piece of the copy is a duplicate.
    filters = Filters(dataclasses.replace(DataConfig(), val_fraction=0.1), set(), {})
    kept = list(filters(docs)) + list(filters(read_file_task(str(path), "copy.txt", 1024, False).docs))
    assert len(kept) == len(set(pieces)) and filters.dropped["duplicate"] == len(pieces) + len(pieces) - len(kept)


def test_a_japanese_wiki_trains_end_to_end_with_the_bpe_preset(tmp_path: Path, cache_dir: Path) -> None:
    dump = write_dump("ja", tmp_path, pages=corpus_pages("ja", 40))
    done = localtrain(["run", "--preset", "python-stdlib", "--data", str(dump), "--max-steps", "30",
                       "--run-dir", "run", "--backend", "torch", *sets(SMALL)], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr
    events = read_jsonl(tmp_path / "run" / "events.jsonl")
    (ready,) = [e for e in events if e["type"] == "prepare" and e["stage"] == "done"]
    assert "characters (" in done.stdout and "per token" in done.stdout  # the console line a user reads

    # Characters per token, counted again from the shards: decode every document and measure it.
    (directory,) = [p.parent for p in (cache_dir / "data").glob("*/manifest.json")
                    if json.loads(p.read_text())["source"] == str(dump)]
    prepared = PreparedData.from_dir(directory)
    tok = prepared.tokenizer()
    chars = tokens = 0
    texts = []
    for split in ("train", "val"):
        ids = np.asarray(prepared.load(split)[0:len(prepared.load(split))])
        ends = np.flatnonzero(ids == tok.eos_id)
        for start, end in zip(np.concatenate([[0], ends[:-1] + 1]), ends):
            texts.append(tok.decode(ids[start:end].tolist()))
            chars += len(texts[-1])
            tokens += int(end - start)
    assert ready["chars_per_token"] == pytest.approx(chars / tokens, rel=1e-9) and 0.5 < chars / tokens < 8
    assert prepared.meta["tokenizer"]["character_coverage"] == 0.9999  # the preset's own value
    assert residue.residue(texts).chars == 0 and not [s for s in LEAKS["ja"] if any(s in t for t in texts)]

    evals = [e for e in events if e["type"] == "eval"]
    assert len(evals) >= 2 and all(math.isfinite(e["val_bpb"]) and e["val_bpb"] > 0 for e in evals)
    assert evals[-1]["val_bpb"] < evals[0]["val_bpb"]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])

    # doctor shows what this vocabulary does to the Japanese text.
    report = localtrain(["doctor", "--json", "--preset", "tiny-shakespeare"], tmp_path, cache_dir)
    (row,) = [r for r in json.loads(report.stdout)["prepared"] if r["source"] == str(dump)]
    assert row["chars_per_token"] == pytest.approx(chars / tokens, rel=1e-9) and row["tokenizer"] == "bpe"


def test_coverage_zero_means_chosen_and_a_value_out_of_range_is_refused() -> None:
    from localtrain import config as cfg
    from localtrain.errors import ConfigError

    assert cfg.resolve("python-stdlib", ["data.character_coverage=0"]).data.character_coverage == 0
    assert cfg.resolve("wikipedia-full").data.character_coverage == 0.9999  # a preset's own value stays
    with pytest.raises(ConfigError) as err:
        cfg.resolve("python-stdlib", ["data.character_coverage=0.3"])
    assert "data.character_coverage" in str(err.value) and "0 (chosen from the corpus)" in str(err.value)
