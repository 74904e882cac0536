"""`localtrain prepare`: prepare a corpus into token shards on its own, resumably.

    localtrain prepare --preset wikipedia-full --data enwiki --out data/enwiki
    localtrain prepare --data ../dump.xml.bz2 --emit-text articles.jsonl

Kill it at any moment and run the same command again: it continues from its last
commit. `--emit-text FILE` also writes the cleaned documents as JSON lines
(`title`, `text`) for inspection or for other tools.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from localtrain import config as cfg
from localtrain.events import Download, Event, Prepare, Warning
from localtrain.flags import add_config_flags, overrides_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flags(p)
    p.add_argument("--out", metavar="DIR", help="prepare into DIR (default: the cache, keyed by source and settings)")
    p.add_argument("--emit-text", metavar="FILE", help="also write the cleaned documents as JSONL (title, text)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes for cleaning and encoding"
                   " (default: run.threads, 0 = every core)")


class Printer:
    """Events as plain lines on stderr: prepare stages, download progress, warnings."""

    def __init__(self) -> None:
        self.last_download = -1.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, Prepare):
            print(f"[{event.stage}] {event.message}", file=sys.stderr, flush=True)
        elif isinstance(event, Download):
            if event.done or event.bytes - self.last_download >= 50e6:
                self.last_download = event.bytes
                eta = f", ETA {event.eta_s:.0f}s" if event.eta_s else ""
                total = f" of {event.total / 1e6:,.1f} MB" if event.total else ""
                print(f"[download] {event.bytes / 1e6:,.1f} MB{total} at {event.bytes_per_s / 1e6:.1f} MB/s{eta}"
                      f" {event.url}", file=sys.stderr, flush=True)
        elif isinstance(event, Warning):
            print(f"warning: {event.message}", file=sys.stderr, flush=True)


def write_text(data: cfg.DataConfig, path: Path, emit: Printer, threads: int) -> int:
    """Write every kept document as a JSON line; the file appears complete or not at all."""
    from localtrain.data.prepare import iter_documents
    from localtrain.files import fsync_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for doc, split in iter_documents(data, emit, threads):
                f.write(json.dumps({"title": doc.title, "text": doc.text, "split": split}, ensure_ascii=False) + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def main(args: argparse.Namespace) -> int:
    from localtrain.data.prepare import prepare

    config = cfg.resolve(args.preset or "python-stdlib", overrides_from(args))
    threads = args.workers if args.workers is not None else config.run.threads
    printer = Printer()
    prepared = prepare(config.data, printer, threads=threads, out_dir=args.out)
    if args.emit_text:
        count = write_text(config.data, Path(args.emit_text), printer, threads)
        print(f"[text] Wrote {count:,} documents to {args.emit_text}.", file=sys.stderr)
    print(prepared.dir)
    return 0
