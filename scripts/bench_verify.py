"""What verifying prepared data costs each time a run (or `prepare`) opens it.

    python3 scripts/bench_verify.py [--gb 1.0] [--drop-caches]

Writes a synthetic prepared directory of about --gb GB through the real ShardWriter
(uint16 shards of 16,777,216 ids, as `data.shard_tokens` defaults to, with their
sha256s in the manifest), then times `integrity.verify` on it: warm (the shards in the
page cache, as when a run starts again soon after the last) and, with --drop-caches
(root on Linux), cold from the disk. Prints the seconds, the GB/s, and the ratio to one
thread of hashlib.sha256 over the same bytes in memory-sized blocks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from localtrain.data import integrity
from localtrain.data.shards import HASH_BLOCK, ShardWriter, read_manifest, write_manifest

SHARD_TOKENS = 16_777_216


def build(directory: Path, gb: float) -> int:
    manifest = {
        "dtype": "uint16", "vocab_size": 65536, "shard_tokens": SHARD_TOKENS, "complete": True,
        "tokenizer_sha256": None, "splits": {s: {"shards": [], "tokens": 0, "documents": 0, "bytes": 0}
                                             for s in ("train", "val")},
    }
    writer = ShardWriter(directory, manifest)
    rng = np.random.default_rng(0)
    tokens = int(gb * 1e9 / 2)
    for start in range(0, tokens, SHARD_TOKENS):
        writer.append("train", rng.integers(0, 65536, min(SHARD_TOKENS, tokens - start), dtype=np.uint16))
    writer.append("val", rng.integers(0, 65536, 1 << 20, dtype=np.uint16))
    writer.commit()
    write_manifest(directory, manifest)
    return sum(p.stat().st_size for p in directory.glob("*.bin"))


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def one_thread_sha256(directory: Path) -> float:
    start = time.perf_counter()
    for path in sorted(directory.glob("*.bin")):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(HASH_BLOCK), b""):
                h.update(block)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--drop-caches", action="store_true", help="also time a cold read (needs root on Linux)")
    ap.add_argument("--dir", help="where to build the directory (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        size = build(directory, args.gb)
        manifest = read_manifest(directory)
        rows = []
        for label in ("warm (page cache)", "cold (from disk)") if args.drop_caches else ("warm (page cache)",):
            if label.startswith("cold") and not drop_caches():
                rows.append((label, "not measured: dropping the page cache needs root", ""))
                continue
            nbytes, seconds = integrity.verify(directory, manifest)
            assert nbytes >= size
            rows.append((label, f"{seconds:.2f} s", f"{size / 1e9 / seconds:.2f} GB/s"))
        single = min(one_thread_sha256(directory) for _ in range(2))
        rows.append(("hashlib.sha256, 1 thread, warm", f"{single:.2f} s", f"{size / 1e9 / single:.2f} GB/s"))
        warm = float(rows[0][1].split()[0])
        print(f"{size / 1e9:.2f} GB in {len(list(directory.glob('*.bin')))} shards, {os.cpu_count()} cores")
        width = max(len(r[0]) for r in rows)
        for name, a, b in rows:
            print(f"{name:<{width}}  {a:>10}  {b}")
        print(f"verify / one-thread sha256: {warm / single:.2f}x the time")


if __name__ == "__main__":
    main()
