"""prepare(): token files, their layout, the cache and its invalidation."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, need
from localtrain.config import DataConfig
from localtrain import config as cfg
from localtrain.data.paths import cache_root
from localtrain.data.prepare import prepare, prepared_dir
from localtrain.data.prepared import token_dtype
from localtrain.data.text import is_val
from localtrain.data.shards import ShardedTokens
from localtrain.data.sources import source_spec
from localtrain.data.stream import run_tasks
from localtrain.events import Prepare

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
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
    assert sorted(p.name for p in prepared.dir.iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "seen.bin", "tokenizer.model", "train-00000.bin", "val-00000.bin"]
    assert prepared.dtype == "uint16" and prepared.vocab_size == 600

    tok = prepared.tokenizer()
    assert tok.sha256 == prepared.tokenizer_sha256
    docs = [d for result, _ in run_tasks(source_spec(data).open(lambda e: None).tasks(None), 1) for d in result.docs]
    expected = {"train": [d for d in docs if not is_val(d.key, data.val_fraction)],
                "val": [d for d in docs if is_val(d.key, data.val_fraction)]}
    for split, split_docs in expected.items():
        tokens = np.asarray(prepared.load(split))
        assert tokens.dtype == np.dtype("<u2") and tokens[-1] == tok.eos_id
        assert len(tokens) == (prepared.train_tokens if split == "train" else prepared.val_tokens)
        ends = np.flatnonzero(tokens == tok.eos_id)
        assert len(ends) == len(split_docs)
        starts = np.concatenate([[0], ends[:-1] + 1])
        assert [tok.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)] == [d.text for d in split_docs]
    assert prepared.train_bytes == sum(len(d.text.encode()) for d in expected["train"])
    assert prepared.val_bytes == sum(len(d.text.encode()) for d in expected["val"])

    meta = json.loads((prepared.dir / "manifest.json").read_text())
    assert meta["complete"] and meta["splits"]["train"]["documents"] == len(expected["train"])
    assert meta["splits"]["val"]["documents"] == len(expected["val"])
    assert meta["tokenizer"]["model_type"] == "bpe" and meta["cache_key"].startswith(prepared.dir.name)
    assert meta["sources"][0]["cursor"] == {"file": len(MODULES)}
    assert meta["dropped"] == {}


def test_min_chars_drops_only_the_shorter_documents(corpus_dir: Path, tmp_path: Path) -> None:
    # Comment lines of 99, 100 and 101 characters beside the modules, each file one document.
    texts = {n: "#" + "abcdefghij"[n % 10] * (n - 2) + "\n" for n in (99, 100, 101)}
    for n, text in texts.items():
        (corpus_dir / f"line{n}.py").write_text(text, encoding="utf-8")
    data = config(corpus_dir, tmp_path / "cache", tokenizer="char", character_coverage=1.0, min_chars=100,
                  document_bytes=1 << 20)
    prepared = prepare(data, lambda e: None)
    tok = prepared.tokenizer()
    kept = []
    for split in ("train", "val"):
        tokens = np.asarray(prepared.load(split)).tolist()
        ends = [i for i, t in enumerate(tokens) if t == tok.eos_id]
        kept += [tok.decode(tokens[s + 1 if k else 0 : e]) for k, (s, e) in enumerate(zip([0, *ends], ends))]
    assert texts[99] not in kept and texts[100] in kept and texts[101] in kept
    modules = [(corpus_dir / "pkg" / m).read_text(encoding="utf-8") for m in MODULES if (corpus_dir / "pkg" / m).is_file()]
    assert len(kept) == len(modules) + 2  # every module is longer than 100 characters
    meta = json.loads((prepared.dir / "manifest.json").read_text())
    assert meta["dropped"] == {"short": 1}


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
    exact = prepare(dataclasses.replace(data, vocab_fit="exact"), lambda e: None)
    assert exact.dir != second.dir and exact.tokenizer_sha256 == second.tokenizer_sha256


def test_an_incomplete_directory_is_continued_not_taken_for_a_cache(corpus_dir: Path, tmp_path: Path) -> None:
    data = config(corpus_dir, tmp_path / "cache")
    first = prepare(data, lambda e: None)
    shards = {p.name: p.read_bytes() for p in first.dir.glob("*.bin")}
    manifest = json.loads((first.dir / "manifest.json").read_text())
    manifest["complete"] = False  # as if a preparation died after its last commit
    (first.dir / "manifest.json").write_text(json.dumps(manifest))
    with open(first.dir / "train-00000.bin", "ab") as f:
        f.write(b"\x01\x02" * 10)  # bytes appended after that commit
    (first.dir / "train-00007.bin").write_bytes(b"\0\0")  # a shard the manifest does not know
    events: list = []
    again = prepare(data, events.append)
    assert again.dir == first.dir and ("done", False) in stages(events)
    assert {p.name: p.read_bytes() for p in again.dir.glob("*.bin")} == shards


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


def test_uint32_shards_load_as_one_uint32_array(tmp_path: Path) -> None:
    ids = np.array([70_000, 5, 2, 100_000, 2], dtype="<u4")
    ids[:3].tofile(tmp_path / "train-00000.bin")
    ids[3:].tofile(tmp_path / "train-00001.bin")
    tokens = ShardedTokens([tmp_path / "train-00000.bin", tmp_path / "train-00001.bin"], [3, 2], "uint32")
    assert len(tokens) == 5 and np.asarray(tokens).tolist() == ids.tolist()
    assert tokens[2:4].tolist() == [2, 100_000] and tokens[4:9].tolist() == [2]


def test_tinyshakespeare_char(tmp_path: Path) -> None:
    need(SHAKESPEARE)
    data = dataclasses.replace(DataConfig(), source=str(SHAKESPEARE), tokenizer="char", character_coverage=1.0,
                               document_bytes=16384, cache_dir=str(tmp_path / "cache"))
    prepared = prepare(data, lambda e: None)
    assert prepared.vocab_size == 68 and prepared.dtype == "uint16"
    total = SHAKESPEARE.stat().st_size
    assert prepared.train_bytes + prepared.val_bytes == total
    assert 0.02 < prepared.val_bytes / total < 0.25  # about val_fraction: drawn by document hash
    tok = prepared.tokenizer()
    val = prepared.load("val")
    first = np.asarray(val[: int(np.argmax(np.asarray(val) == tok.eos_id))])
    assert tok.decode(first.tolist()) in SHAKESPEARE.read_text(encoding="utf-8")
    assert sum(os.path.getsize(p) for p in prepared.shards("train")) == 2 * prepared.train_tokens


def test_a_value_means_the_same_from_a_preset_and_from_the_command_line(tmp_path: Path) -> None:
    # Where data.vocab_size came from changes neither the prepared data nor its cache key.
    preset = cfg.resolve("tiny-shakespeare", [f"data.cache_dir={tmp_path}"])
    typed = cfg.resolve("tiny-shakespeare", [f"data.cache_dir={tmp_path}", f"data.vocab_size={preset.data.vocab_size}"])
    assert prepared_dir(preset.data) == prepared_dir(typed.data)
    exact = cfg.resolve("tiny-shakespeare", [f"data.cache_dir={tmp_path}", "data.vocab_fit=exact"])
    assert prepared_dir(exact.data) != prepared_dir(preset.data)


def test_a_killed_writes_temporary_is_removed_when_the_directory_is_next_opened(
        corpus_dir: Path, tmp_path: Path) -> None:
    """A SIGKILL between a temporary and its rename leaves `.manifest.json.tmpPID`; the next preparation
    removes it once that process is gone, and leaves a living writer's temporary and other names alone."""
    data = config(corpus_dir, tmp_path / "cache")
    first = prepare(data, lambda e: None, threads=1)
    before = {p.name: p.read_bytes() for p in first.dir.iterdir() if p.is_file()}
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    planted = {f".manifest.json.tmp{dead}": False, f".tokenizer.model.tmp{dead}": False,
               f".manifest.json.tmp{os.getpid()}": True, ".manifest.json.tmp": True}
    for name in planted:
        (first.dir / name).write_text("{}")
    events: list = []
    again = prepare(data, events.append, threads=1)
    assert stages(events) == [("done", True)] and again.dir == first.dir
    assert {name: (first.dir / name).exists() for name in planted} == planted
    assert {p.name: p.read_bytes() for p in first.dir.iterdir() if p.is_file() and p.name not in planted} == before
