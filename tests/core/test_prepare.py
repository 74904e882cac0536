"""prepare(): token files, their layout, the cache and its invalidation."""

from __future__ import annotations

import dataclasses
import json
import os
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from localtrain.config import DataConfig
from localtrain.data import prepare as prepare_module
from localtrain.data.prepare import PreparedData, cache_root, prepare, token_dtype
from localtrain.data.sources import read_corpus, split_documents
from localtrain.events import Prepare

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
MODULES = ["textwrap.py", "string.py", "heapq.py", "bisect.py", "colorsys.py", "fnmatch.py", "glob.py",
           "keyword.py", "numbers.py", "operator.py", "shlex.py", "sched.py", "queue.py", "copy.py"]


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for name in MODULES:
        if (STDLIB / name).is_file():
            (root / "pkg").mkdir(parents=True, exist_ok=True)
            (root / "pkg" / name).write_bytes((STDLIB / name).read_bytes())
    (root / "README.txt").write_text("not code\n", encoding="utf-8")
    return root


def config(source: Path, cache: Path, **kw) -> DataConfig:
    kw = {"include": ["*.py"], "tokenizer": "bpe", "vocab_size": 600, "val_fraction": 0.2,
          "document_bytes": 8192, **kw}
    return dataclasses.replace(DataConfig(), source=str(source), cache_dir=str(cache), **kw)


def stages(events: list) -> list[tuple[str, bool]]:
    return [(e.stage, e.cached) for e in events if isinstance(e, Prepare)]


def test_prepare_writes_documents_separated_by_eos(corpus_dir: Path, tmp_path: Path) -> None:
    data = config(corpus_dir, tmp_path / "cache")
    events: list = []
    prepared = prepare(data, events.append, threads=2)
    assert stages(events) == [("read", False), ("tokenizer", False), ("encode", False), ("done", False)]
    assert prepared.dir.parent == tmp_path / "cache" / "data"
    assert sorted(p.name for p in prepared.dir.iterdir()) == ["meta.json", "tokenizer.model", "train.bin",
                                                             "val.bin"]
    assert prepared.dtype == "uint16" and prepared.vocab_size == 600

    tok = prepared.tokenizer()
    assert tok.sha256 == prepared.tokenizer_sha256
    train_docs, val_docs = split_documents(read_corpus(data, lambda e: None).documents, data.val_fraction)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        tokens = prepared.load(split)
        assert tokens.dtype == np.dtype("<u2") and tokens[-1] == tok.eos_id
        assert len(tokens) == (prepared.train_tokens if split == "train" else prepared.val_tokens)
        ends = np.flatnonzero(np.asarray(tokens) == tok.eos_id)
        assert len(ends) == len(docs)
        starts = np.concatenate([[0], ends[:-1] + 1])
        assert [tok.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)] == [d.text for d in docs]
    assert prepared.train_bytes == sum(len(d.text.encode()) for d in train_docs)
    assert prepared.val_bytes == sum(len(d.text.encode()) for d in val_docs)

    meta = json.loads((prepared.dir / "meta.json").read_text())
    assert meta["documents"] == {"train": len(train_docs), "val": len(val_docs)}
    assert meta["tokens"] == {"train": prepared.train_tokens, "val": prepared.val_tokens}
    assert meta["tokenizer"]["model_type"] == "bpe" and meta["cache_key"].startswith(prepared.dir.name)
    assert meta["files"] == len(MODULES) and meta["skipped"] == []


def test_cache_hit_reuses_files_without_reading(corpus_dir: Path, tmp_path: Path) -> None:
    data = config(corpus_dir, tmp_path / "cache")
    first = prepare(data, lambda e: None)
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.dir.iterdir()}
    events: list = []
    second = prepare(data, events.append)
    assert stages(events) == [("done", True)]
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in second.dir.iterdir()} == mtimes
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 1


def test_changed_source_or_settings_invalidate_the_cache(corpus_dir: Path, tmp_path: Path) -> None:
    data = config(corpus_dir, tmp_path / "cache")
    first = prepare(data, lambda e: None)
    target = corpus_dir / "pkg" / "heapq.py"
    target.write_text(target.read_text() + "\n# one more line\n", encoding="utf-8")
    events: list = []
    second = prepare(data, events.append)
    assert second.dir != first.dir and ("done", False) in stages(events)
    assert prepare(dataclasses.replace(data, val_fraction=0.3), lambda e: None).dir not in (first.dir, second.dir)
    explicit = prepare(data, lambda e: None, explicit={"data.vocab_size"})
    assert explicit.dir != second.dir and explicit.tokenizer_sha256 == second.tokenizer_sha256


def test_incomplete_and_leftover_directories_are_not_taken_for_a_cache(corpus_dir: Path, tmp_path: Path) -> None:
    data = config(corpus_dir, tmp_path / "cache")
    first = prepare(data, lambda e: None)
    parent = first.dir.parent
    (first.dir / "meta.json").unlink()  # as if a preparation died before its last write
    # A killed run on this host: its process (pid 999999999) no longer exists.
    leftover = parent / f".tmp-0123456789abcdef0123-{prepare_module._HOST}-999999999-dead"
    foreign = parent / ".tmp-0123456789abcdef0123-otherhost-999999999-busy"
    foreign.mkdir()
    leftover.mkdir()
    (leftover / "train.bin").write_bytes(b"\0\0")
    events: list = []
    again = prepare(data, events.append)
    assert again.dir == first.dir and ("done", False) in stages(events)
    assert (again.dir / "meta.json").is_file() and not leftover.exists()
    # Another host's preparation may still be running on a shared cache: left alone.
    assert sorted(p.name for p in parent.iterdir()) == sorted([first.dir.name, foreign.name])


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOCALTRAIN_CACHE", str(tmp_path / "env"))
    assert cache_root(DataConfig()) == tmp_path / "env"
    assert cache_root(dataclasses.replace(DataConfig(), cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv("LOCALTRAIN_CACHE")
    assert cache_root(DataConfig()) == Path.home() / ".cache" / "localtrain"


def test_token_dtype_rule() -> None:
    assert token_dtype(68) == "uint16"
    assert token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"
    assert token_dtype(200_000) == "uint32"


def test_uint32_files_load_as_uint32(tmp_path: Path) -> None:
    ids = np.array([70_000, 5, 2, 100_000, 2], dtype="<u4")
    ids.tofile(tmp_path / "train.bin")
    prepared = PreparedData(tmp_path, tmp_path / "tokenizer.model", tmp_path / "train.bin", tmp_path / "val.bin",
                            "uint32", 100_001, 5, 0, 0, 0, "", {})
    assert prepared.load("train").tolist() == ids.tolist()


def test_tinyshakespeare_char(tmp_path: Path) -> None:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"tinyshakespeare is not in the shared data folder ({SHAKESPEARE})")
    data = dataclasses.replace(DataConfig(), source=str(SHAKESPEARE), tokenizer="char", character_coverage=1.0,
                               document_bytes=16384, cache_dir=str(tmp_path / "cache"))
    prepared = prepare(data, lambda e: None)
    assert prepared.vocab_size == 68 and prepared.dtype == "uint16"
    total = SHAKESPEARE.stat().st_size
    assert prepared.train_bytes + prepared.val_bytes == total
    assert 0.1 <= prepared.val_bytes / total < 0.1 + 16384 / total
    tok = prepared.tokenizer()
    val = prepared.load("val")
    first = np.asarray(val[: int(np.argmax(np.asarray(val) == tok.eos_id))])
    assert tok.decode(first.tolist()) in SHAKESPEARE.read_text(encoding="utf-8")
    assert os.path.getsize(prepared.train_path) == 2 * prepared.train_tokens
