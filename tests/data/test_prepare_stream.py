"""`localtrain prepare`: shards and manifest, SIGKILL and rerun, --emit-text, cache reuse, bad input."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from localtrain.config import DataConfig
from localtrain.data.commit import text_hash
from localtrain.data.prepare import Cancelled, prepare, prepared_dir
from localtrain.errors import DataError
from conftest import SHARED_DATA, localtrain, need, read_jsonl, start_localtrain, wait_for

WIKI = SHARED_DATA / "wikipedia"
ENWIKI = WIKI / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
ARGS = ["--set", "data.vocab_size=600", "--set", "data.shard_tokens=16384", "--workers", "1"]


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix in (".bin", ".model")}


def manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def shards_written(directory: Path) -> int:
    m = manifest(directory)
    return 0 if m is None else sum(len(m["splits"][s]["shards"]) for s in ("train", "val"))


def test_sigkill_at_random_points_then_rerun_gives_identical_shards(tmp_path: Path, cache_dir: Path) -> None:
    need(ENWIKI)
    phased = [*ARGS, "--set", "data.phases=[20,60]"]  # phase ends are recorded on the way
    ref = localtrain(["prepare", "--data", str(ENWIKI), "--out", "ref", *phased], tmp_path, cache_dir)
    assert ref.returncode == 0, ref.stderr
    expected = files(tmp_path / "ref")
    assert len([n for n in expected if n.startswith("train-")]) > 10

    rng = random.Random(7)
    out = tmp_path / "killed"
    cmd = ["prepare", "--data", str(ENWIKI), "--out", "killed", *phased]
    complete_after = []
    # While the dump is read for the tokenizer sample, right after the first shards are
    # committed, and at a random point of the resumed run.
    for wait in ("early", "shards", "random"):
        proc = start_localtrain(cmd, tmp_path, cache_dir)
        if wait == "shards":
            wait_for(lambda: shards_written(out) > 0, timeout=120, proc=proc)
            time.sleep(rng.uniform(0.0, 0.2))
        elif wait == "early":
            time.sleep(rng.uniform(0.5, 2.0))
        else:
            time.sleep(rng.uniform(0.1, 0.8))  # the resumed run may finish first on a quiet machine
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        complete_after.append(bool((manifest(out) or {}).get("complete")))
    assert complete_after[:2] == [False, False] and shards_written(out) > 0
    rerun = localtrain(cmd, tmp_path, cache_dir)
    assert rerun.returncode == 0, rerun.stderr
    if complete_after[2]:
        assert "Using the cached data" in rerun.stderr
    else:
        assert "[resume]" in rerun.stderr
    assert files(out) == expected
    got, want = manifest(out), manifest(tmp_path / "ref")
    assert got["complete"] and got["splits"] == want["splits"] and got["dropped"] == want["dropped"]
    assert got["phases"] == want["phases"] and [p["documents"] for p in got["phases"]] == [20, 60, None]
    assert 0 < got["phases"][0]["train_tokens"] < got["phases"][1]["train_tokens"] < got["phases"][2]["train_tokens"]


def test_emit_text_cache_reuse_and_loading_the_shards(tmp_path: Path, cache_dir: Path) -> None:
    need(ENWIKI)
    args = ["prepare", "--data", str(ENWIKI), "--emit-text", "docs.jsonl", *ARGS]
    first = localtrain(args, tmp_path, cache_dir)
    assert first.returncode == 0, first.stderr
    rows = read_jsonl(tmp_path / "docs.jsonl")
    assert rows[0]["title"] == "Anarchism" and rows[0]["text"].startswith("Anarchism is a political philosophy")
    assert {"title", "text"} <= set(rows[0])
    directory = Path(first.stdout.strip().splitlines()[-1])
    m = manifest(directory)
    assert len(rows) == m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    assert m["dropped"]["redirect"] > 0 and m["dropped"]["disambiguation"] > 0
    second = localtrain(args, tmp_path, cache_dir)
    assert second.returncode == 0 and "Using the cached data" in second.stderr
    assert Path(second.stdout.strip().splitlines()[-1]) == directory

    from localtrain.data.prepared import PreparedData

    prepared = PreparedData.from_dir(directory)
    tok = prepared.tokenizer()
    val = np.asarray(prepared.load("val"))
    ends = np.flatnonzero(val == tok.eos_id)
    val_rows = [r["text"] for r in rows if r["split"] == "val"]
    assert len(ends) == len(val_rows) and tok.decode(val[: ends[0]].tolist()) == val_rows[0]


def config(source: Path, tmp_path: Path, **kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), source=str(source), cache_dir=str(tmp_path / "cache"), **kw)


def test_a_source_without_documents_says_why(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "src" / "b.txt").write_text("  \n")
    with pytest.raises(DataError) as err:
        prepare(config(tmp_path / "src", tmp_path), lambda e: None, threads=1)
    message = str(err.value)
    assert "yields no documents" in message and "1 not_utf8" in message and "1 empty" in message
    assert not list((tmp_path / "cache").rglob("*.bin"))


def test_vendored_and_generated_files_are_skipped_and_duplicates_dropped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "vendor" / "lib").mkdir(parents=True)
    (src / "pkg").mkdir()
    body = "".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(300))
    (src / "pkg" / "a.py").write_text(body)
    (src / "pkg" / "copy_of_a.py").write_text(body)
    (src / "pkg" / "b.py").write_text(body.replace("x", "y"))
    (src / "pkg" / "c.py").write_text(body.replace("x", "z"))
    (src / "pkg" / "gen_pb2.py").write_text(body.replace("x", "w"))
    (src / "pkg" / "made.py").write_text("# Code generated by a tool. DO NOT EDIT.\n" + body.replace("x", "v"))
    (src / "vendor" / "lib" / "dep.py").write_text(body.replace("x", "u"))
    events: list = []
    prepared = prepare(config(src, tmp_path, tokenizer="char", character_coverage=1.0, val_fraction=0.5,
                              document_bytes=1 << 20), events.append, threads=1)
    m = prepared.meta
    assert m["dropped"] == {"duplicate": 1, "generated": 2}
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 3


def test_a_resumed_preparation_drops_a_duplicate_of_a_document_committed_before(tmp_path: Path) -> None:
    # Bug caught: the duplicate hashes read back from seen.bin as numpy S8 items, which lose
    # trailing zero bytes, so a document whose hash ends in one (1 in 256) was kept again after a resume.
    text = next(t for t in (f"A short document, number {i}, of plain text.\n" * 40 for i in range(5000))
                if text_hash(t).endswith(b"\x00"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(text)
    for i in range(1, 4):
        (src / f"b{i}.txt").write_text(f"Another text, the {i}th, to fill the split.\n" * 40)
    (src / "c.txt").write_text(text)  # read after the stop

    trained: list = []

    class AfterTheTokenizer:
        """Asks to stop once the tokenizer is trained: the encoding commits its first file and stops."""

        def is_set(self) -> bool:
            return bool(trained)

    data = config(src, tmp_path, tokenizer="char", character_coverage=1.0, val_fraction=0.2, document_bytes=1 << 20)
    with pytest.raises(Cancelled):
        prepare(data, lambda e: trained.append(e) if e.stage == "tokenizer" else None, threads=1,
                cancel=AfterTheTokenizer())
    first = manifest(prepared_dir(data))
    assert first["dedup"]["count"] == 1 and not first.get("complete")
    m = prepare(data, lambda e: None, threads=1).meta
    assert m["dropped"] == {"duplicate": 1}
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 4


def test_a_vocab_too_large_fails_under_exact_fit_and_shrinks_by_default(tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_text("".join(f"line {i} of a short text\n\n" for i in range(400)))
    data = config(src, tmp_path, vocab_size=5000, document_bytes=512)
    with pytest.raises(DataError) as err:
        prepare(dataclasses.replace(data, vocab_fit="exact"), lambda e: None, threads=1)
    assert "data.vocab_size = 5000 is too large" in str(err.value)
    events: list = []
    prepared = prepare(data, events.append, threads=1)
    assert prepared.vocab_size < 5000
    assert any(getattr(e, "code", "") == "vocab_shrunk" for e in events)


def peak_rss_mb(source: Path, out: Path, cache: Path) -> float:
    import os
    import re
    import subprocess
    import sys

    code = ("import resource, sys; from localtrain.cli import main; rc = main(sys.argv[1:]); "
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    done = subprocess.run(
        [sys.executable, "-c", code, "prepare", "--data", str(source), "--out", str(out), "--workers", "1",
         "--set", "data.vocab_size=600", "--set", "data.tokenizer_sample_bytes=1000000"],
        capture_output=True, text=True, env={**os.environ, "LOCALTRAIN_CACHE": str(cache)}, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(re.search(r"RSS (\d+)", done.stderr).group(1)) / 1024


def test_memory_stays_bounded_as_the_dump_grows(tmp_path: Path, cache_dir: Path) -> None:
    import bz2
    import re

    xml = bz2.decompress(need(ENWIKI).read_bytes())
    head, tail = xml[: xml.find(b"<page>")], xml[xml.rfind(b"</page>") + len(b"</page>"):]
    pages = re.findall(rb"<page>.*?</page>", xml, re.S)
    big = tmp_path / "big-pages-articles.xml"
    with open(big, "wb") as f:  # 4 copies of every page, each its own article (title and last line)
        f.write(head)
        for r in range(4):
            for p in pages:
                f.write(p.replace(b"</title>", b" %d</title>" % r, 1).replace(b"</text>", b"\n\nCopy %d.</text>" % r, 1))
        f.write(tail)
    small_rss = peak_rss_mb(ENWIKI, tmp_path / "small", cache_dir)
    big_rss = peak_rss_mb(big, tmp_path / "big", cache_dir)
    assert big.stat().st_size > 3.9 * len(xml)
    assert big_rss < small_rss * 1.2 + 20, (small_rss, big_rss)
    m = manifest(tmp_path / "big")
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 4 * 98
