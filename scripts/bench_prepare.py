"""Benchmark of corpus preparation: cleaning per core, encoding per worker, memory, markup residue.

    python3 scripts/bench_prepare.py [DUMP.xml.bz2] [--repeat 33] [--skip-memory] [--residue DUMP ...]

Prints a table: bz2 decompression, XML parse + wiki cleaning (MB/s of XML, articles/s)
on one core, sentencepiece's own encode speed on the cleaned text (one thread), the
encoder with 1 and 2 worker processes and its ratio to that, and the peak RSS of
`localtrain prepare` on the dump and on a synthetic repetition of it (each page
repeated `--repeat` times with a distinct title and a distinct last line, so nothing is
dropped as a duplicate). Then the markup left in the cleaned articles of each dump in
`--residue` (default: every dump of the shared data, the multistream one included), in
the measure of `residue.residue`, with the first leaks found.
"""

from __future__ import annotations

import argparse
import bz2
import io
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import sentencepiece as spm

from localtrain.data import dump, residue, wiki
from localtrain.data.encode import Encoder
from localtrain.data.dumpsource import MultistreamSource, clean_pages
from localtrain.data.local import open_local
from localtrain.data.stream import run_tasks

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikipedia"
DEFAULT = SHARED / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def parse_and_clean(xml: bytes) -> tuple[int, list[str]]:
    site = dump.read_site(xml[: xml.find(b"<page")])
    parser = ET.XMLPullParser(events=("end",))
    pages = []
    for start in range(0, len(xml), 1 << 20):
        parser.feed(xml[start : start + (1 << 20)])
        pages.extend(dump._pages_from_parser(parser))
    parser.close()
    result = clean_pages(pages, len(xml), site)
    return result.articles, [d.text for d in result.docs]


def residue_of(path: Path) -> tuple[int, residue.Residue]:
    """(articles, residue) of a dump read as `localtrain prepare` reads it (its index too, if any)."""
    source = open_local(path, [], [], 1 << 16)
    texts = [d.text for result, _ in run_tasks(source.tasks(None), 1) for d in result.docs]
    site = source.site if isinstance(source, MultistreamSource) else source.report.site
    return len(texts), residue.residue(texts, site or wiki.DEFAULT_SITE)


def best_of(n: int, fn):
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def peak_rss_of_prepare(source: Path, work: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `localtrain prepare` on `source` with one worker."""
    cmd = [sys.executable, "-c",
           "import resource, sys; from localtrain.cli import main; rc = main(sys.argv[1:]); "
           "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)",
           "prepare", "--data", str(source), "--out", str(work), "--workers", "1",
           "--set", "data.vocab_size=2000", "--set", "data.tokenizer_sample_bytes=4000000"]
    env = {**os.environ, "LOCALTRAIN_CACHE": str(work.parent / "cache")}
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    rss_kb = int(re.search(r"RSS (\d+)", done.stderr).group(1))
    return rss_kb / 1024, seconds


def synthetic(xml: bytes, repeat: int, path: Path) -> int:
    head_end = xml.find(b"<page>")
    tail_start = xml.rfind(b"</page>") + len(b"</page>")
    pages = re.findall(rb"<page>.*?</page>", xml, re.S)
    with open(path, "wb") as f:
        f.write(xml[:head_end])
        for r in range(repeat):
            for p in pages:
                p = p.replace(b"</title>", b" (%d)</title>" % r, 1)
                f.write(p.replace(b"</text>", b"\n\nCopy %d.</text>" % r, 1))
        f.write(xml[tail_start:])
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=33, help="repetitions for the memory case (33: ~200 MB)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--residue", nargs="*", type=Path, help="dumps whose cleaned text's markup residue is measured")
    args = ap.parse_args()
    path = Path(args.dump)
    compressed = path.read_bytes()
    t_bz2, xml = best_of(3, lambda: bz2.decompress(compressed))
    mb = len(xml) / 1e6
    t_clean, (n_articles, texts) = best_of(3, lambda: parse_and_clean(xml))
    text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    rows = [
        ("bz2 decompression (1 core)", f"{mb / t_bz2:.1f} MB/s of XML", ""),
        ("parse + clean (1 core)", f"{mb / t_clean:.1f} MB/s of XML", f"{n_articles / t_clean:.0f} articles/s"),
        ("bz2 + parse + clean (1 core)", f"{mb / (t_bz2 + t_clean):.1f} MB/s of XML",
         f"{n_articles / (t_bz2 + t_clean):.0f} articles/s"),
    ]
    # A tokenizer trained on the cleaned text itself.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(t for t in texts for t in t.split("\n") if t),
                                   model_writer=model, vocab_size=8000, model_type="bpe", minloglevel=2,
                                   byte_fallback=True)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    corpus = texts * 2
    t_raw, ids = best_of(3, lambda: sp.encode(corpus, num_threads=1))
    tokens = sum(len(x) for x in ids)
    rows.append(("sentencepiece encode (1 thread)", f"{tokens / t_raw / 1e6:.2f} M tokens/s",
                 f"{2 * text_mb / t_raw:.1f} MB/s"))
    for workers in (1, 2):
        with Encoder(model.getvalue(), "uint16", workers) as enc:
            enc.encode(corpus[:4])  # workers started
            t_enc, out = best_of(3, lambda: enc.encode(corpus))
        rows.append((f"localtrain encoder, {workers} worker(s)", f"{len(out) / t_enc / 1e6:.2f} M tokens/s",
                     f"{t_raw / t_enc:.2f}x sentencepiece"))
    if not args.skip_memory:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            rss_small, s_small = peak_rss_of_prepare(path, tmp_path / "small")
            size = synthetic(xml, args.repeat, tmp_path / "big-pages-articles.xml")
            rss_big, s_big = peak_rss_of_prepare(tmp_path / "big-pages-articles.xml", tmp_path / "big")
        rows.append((f"prepare peak RSS, {mb:.0f} MB dump", f"{rss_small:.0f} MB", f"{s_small:.0f} s"))
        rows.append((f"prepare peak RSS, {size / 1e6:.0f} MB synthetic", f"{rss_big:.0f} MB", f"{s_big:.0f} s"))
    print(f"{path.name}: {mb:.1f} MB of XML, {n_articles} articles, {text_mb:.1f} MB of clean text, "
          f"{os.cpu_count()} cores, peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    width = max(len(r[0]) for r in rows)
    for name, a, b in rows:
        print(f"{name:<{width}}  {a:>22}  {b}")
    dumps = args.residue if args.residue is not None else sorted(
        p for p in SHARED.rglob("*.bz2") if not p.name.endswith("-index.txt.bz2"))
    if dumps:
        print("\nmarkup residue of the cleaned articles (residue.residue: brackets, image parameters, file and category"
              " prefixes, entities, tags, table and template remnants)")
    for path in dumps:
        articles, found = residue_of(path)
        leaks = ", ".join(repr(e[:40]) for e in found.examples[:3])
        print(f"{path.name:<72} {articles:>5} articles {found.total:>10,} chars  residue {found.fraction:.4%}"
              f" ({found.chars} chars){'  e.g. ' + leaks if leaks else ''}")


if __name__ == "__main__":
    main()
