"""Token shards: fixed-size files per split, appended batch after batch, and their manifest.

A split is a sequence of files `train-00000.bin`, `train-00001.bin`, ... of exactly
`shard_tokens` little-endian ids each, the last one holding the rest. Tokens are only
ever appended. A commit fsyncs the files written to, then replaces `manifest.json`
atomically; the manifest alone says how many tokens of each shard count. Reopening a
directory after a kill cuts every shard back to its committed length and removes
shards the manifest does not know, so the next append continues exactly where the last
commit stopped, and the finished files are the same bytes as those of a run that was
never interrupted.

Every byte is covered by a hash: the manifest records the sha256 of each shard's
committed bytes (updated as the shard grows) and its own sha256 over the rest of it, so
`integrity.verify` can tell a damaged cache from a good one.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from localtrain.errors import DataError
from localtrain.files import Appender, file_hasher, fsync_dir, fsync_file, remove_file, truncate, write_atomic

MANIFEST = "manifest.json"
SEEN_FILE = "seen.bin"
"""The 8-byte hashes of the documents kept so far (for the duplicate filter of a continued preparation)."""
SPLITS = ("train", "val")
SELF_HASH = "manifest_sha256"
SHARD_FILE = re.compile(r"(train|val)-\d{5,}\.bin")
"""The names of the shards a preparation writes: the only files it ever deletes."""


class DamagedData(DataError):
    """Prepared data whose bytes do not match what was recorded when they were written."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != SELF_HASH}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a prepared directory, checked against its own sha256; None when there is none.

    Raises DamagedData when it cannot be read or does not match (a manifest written
    before the hash existed is read as it is)."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise DamagedData(f"{path} cannot be read as JSON ({exc}): it is damaged.") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise DamagedData(f"{path} is not a manifest of prepared data: it is damaged.")
    recorded = manifest.get(SELF_HASH)
    if recorded is not None and recorded != hashlib.sha256(_canonical(manifest)).hexdigest():
        raise DamagedData(f"{path} does not match the sha256 it was written with: it was edited or is damaged.")
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    manifest[SELF_HASH] = hashlib.sha256(_canonical(manifest)).hexdigest()
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))


class ShardWriter:
    """Appends token arrays to the shards of each split; `commit` makes them count."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.dir = directory
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        self.shard_tokens = int(manifest["shard_tokens"])
        self._touched: set[Path] = set()
        self._hashes: dict[str, Any] = {}
        """Running sha256 of each shard appended to, keyed by file name."""
        self._restore()

    def _restore(self) -> None:
        known = set()
        for split in SPLITS:
            for shard in self.manifest["splits"][split]["shards"]:
                path = self.dir / shard["file"]
                known.add(shard["file"])
                size = shard["tokens"] * self.dtype.itemsize
                if not path.exists() or path.stat().st_size < size:
                    raise DamagedData(f"{path} is shorter than its manifest says ({size:,} bytes): it is damaged.")
                if path.stat().st_size != size:
                    truncate(path, size)  # bytes appended after the last commit
        for path in self.dir.iterdir():
            if SHARD_FILE.fullmatch(path.name) and path.name not in known:
                remove_file(path)  # a shard begun after the last commit

    def append(self, split: str, tokens: np.ndarray) -> None:
        info = self.manifest["splits"][split]
        data = np.ascontiguousarray(tokens, dtype=self.dtype)
        pos = 0
        while pos < len(data):
            shards = info["shards"]
            if not shards or shards[-1]["tokens"] >= self.shard_tokens:
                shards.append({"file": shard_name(split, len(shards)), "tokens": 0})
            last = shards[-1]
            take = min(self.shard_tokens - last["tokens"], len(data) - pos)
            path = self.dir / last["file"]
            block = data[pos : pos + take].tobytes()
            if last["file"] not in self._hashes:
                # The shard's committed bytes, hashed once when a run continues appending to it.
                self._hashes[last["file"]] = file_hasher(path, "sha256", last["tokens"] * self.dtype.itemsize) \
                    if last["tokens"] else hashlib.sha256()
            with Appender(path) as f:
                f.write(block)
            self._hashes[last["file"]].update(block)
            self._touched.add(path)
            last["tokens"] += take
            info["tokens"] += take
            pos += take

    def commit(self, **fields: Any) -> None:
        """fsync what was appended, then record it (and `fields`) in the manifest atomically."""
        for path in sorted(self._touched):
            fsync_file(path)
        if self._touched:
            fsync_dir(self.dir)
        self._touched.clear()
        for split in SPLITS:
            for shard in self.manifest["splits"][split]["shards"]:
                if shard["file"] in self._hashes:
                    shard["sha256"] = self._hashes[shard["file"]].hexdigest()
        self.manifest.update(fields)
        write_manifest(self.dir, self.manifest)


class ShardedTokens:
    """The shards of one split seen as one read-only token array (length and slices)."""

    def __init__(self, paths: list[Path], counts: list[int], dtype: str) -> None:
        le = np.dtype(dtype).newbyteorder("<")
        self._maps = [np.memmap(p, dtype=le, mode="r", shape=(n,)) for p, n in zip(paths, counts) if n]
        self._starts = np.cumsum([0] + [len(m) for m in self._maps])
        self.dtype = le

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("ShardedTokens supports slices only")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ShardedTokens supports contiguous slices only")
        if stop <= start:
            return np.empty(0, dtype=self.dtype)
        parts = []
        i, pos = int(np.searchsorted(self._starts, start, side="right")) - 1, start  # the map holding `start`
        while pos < stop:
            base = int(self._starts[i])
            end = min(stop, int(self._starts[i + 1]))
            parts.append(self._maps[i][pos - base : end - base])
            pos, i = end, i + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[0 : len(self)]
        return out.astype(dtype) if dtype is not None else np.asarray(out)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()
