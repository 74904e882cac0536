"""Verifying prepared data before it is trained on, and moving a damaged directory aside.

`verify` reads every byte the manifest vouches for: the tokenizer against the manifest's
`tokenizer_sha256`, each shard against its size and sha256, and the duplicate hashes in
seen.bin. Shards are hashed in parallel threads
(hashlib releases the interpreter lock), streamed in blocks, so memory stays flat. Data
prepared before shards were hashed is checked for its sizes and for token ids inside the
vocabulary, and its hashes are recorded then.

A directory that fails is renamed to `<name>.damaged-<date-time>` beside itself, never
deleted, and prepared again.
"""

from __future__ import annotations

import datetime
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from localtrain import ownership
from localtrain.data.shards import SEEN_FILE, SPLITS, DamagedData, write_manifest
from localtrain.files import file_digest, replace

TOKENIZER = "tokenizer.model"
RANGE_BLOCK = 1 << 24
"""Token ids checked per block in data prepared before shards were hashed."""


def verify(directory: Path, manifest: dict[str, Any], threads: int = 0) -> tuple[int, float]:
    """Check every byte the manifest records; raise DamagedData naming the first file that fails.

    Returns (bytes read, seconds). Records the hashes of shards that have none yet.
    """
    start = time.perf_counter()
    total = 0
    tok = directory / TOKENIZER
    if manifest.get("tokenizer_sha256") is not None:
        if not tok.is_file():
            raise DamagedData(f"{tok} is missing.")
        if file_digest(tok) != manifest["tokenizer_sha256"]:
            raise DamagedData(f"{tok} does not match the sha256 its manifest records: it was replaced or is damaged.")
        total += tok.stat().st_size
    itemsize = np.dtype(manifest["dtype"]).itemsize
    shards = [s for split in SPLITS for s in manifest["splits"][split]["shards"]]
    for shard in shards:
        path = directory / shard["file"]
        size = int(shard["tokens"]) * itemsize
        have = path.stat().st_size if path.is_file() else None
        # A preparation still going may have appended past its last commit; the excess is cut on resume.
        if have is None or have < size or (manifest.get("complete") and have != size):
            raise DamagedData(f"{path} is {'missing' if have is None else f'{have:,} bytes'} but the manifest "
                              f"records {size:,} bytes: it is damaged.")
        total += size
    workers = max(1, min(len(shards), threads or os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(lambda s: _check_shard(directory, s, itemsize, manifest), shards))
    if any(found):
        write_manifest(directory, manifest)  # hashes of data prepared before shards were hashed
    total += _check_seen(directory, manifest)
    return total, time.perf_counter() - start


def _check_shard(directory: Path, shard: dict[str, Any], itemsize: int, manifest: dict[str, Any]) -> bool:
    """Verify one shard; True when its hash was recorded now (a shard from before hashes)."""
    path = directory / shard["file"]
    size = int(shard["tokens"]) * itemsize
    if shard.get("sha256") is not None:
        if file_digest(path, size=size) != shard["sha256"]:
            raise DamagedData(f"{path} does not match the sha256 its manifest records: it is damaged.")
        return False
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(int(shard["tokens"]),)) if size else np.empty(0, dtype)
    vocab = int(manifest["vocab_size"])
    for i in range(0, len(tokens), RANGE_BLOCK):
        top = int(tokens[i : i + RANGE_BLOCK].max())
        if top >= vocab:
            raise DamagedData(f"{path} holds token id {top}, outside the vocabulary of {vocab}: it is damaged.")
    del tokens
    shard["sha256"] = file_digest(path, size=size)
    return True


def _check_seen(directory: Path, manifest: dict[str, Any]) -> int:
    """seen.bin, the hashes of the documents kept (read to continue a preparation)."""
    dedup = manifest.get("dedup") or {}
    if dedup.get("sha256") is None:
        return 0
    path = directory / SEEN_FILE
    size = int(dedup["count"]) * 8
    if not path.is_file() or path.stat().st_size < size:
        raise DamagedData(f"{path} is shorter than the {size:,} bytes its manifest records: it is damaged.")
    if file_digest(path, size=size) != dedup["sha256"]:
        raise DamagedData(f"{path} does not match the sha256 its manifest records: it is damaged.")
    return size


def set_aside(directory: Path) -> Path:
    """Rename a damaged prepared directory beside itself (kept for inspection); the new name."""
    ownership.require(directory, "prepared")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = directory.with_name(f"{directory.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = directory.with_name(f"{directory.name}.damaged-{stamp}-{n}")
    replace(directory, aside)
    return aside
