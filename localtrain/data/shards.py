"""Token shards: fixed-size files per split, appended batch after batch, and their manifest.

A split is a sequence of files `train-00000.bin`, `train-00001.bin`, ... of exactly
`shard_tokens` little-endian ids each, the last one holding the rest. Tokens are only
ever appended. A commit fsyncs the files written to, then replaces `manifest.json`
atomically; the manifest alone says how many tokens of each shard count. Reopening a
directory after a kill cuts every shard back to its committed length and removes
shards the manifest does not know, so the next append continues exactly where the last
commit stopped, and the finished files are the same bytes as those of a run that was
never interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from localtrain.files import fsync_dir, write_atomic

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))


class ShardWriter:
    """Appends token arrays to the shards of each split; `commit` makes them count."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.dir = directory
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        self.shard_tokens = int(manifest["shard_tokens"])
        self._touched: set[Path] = set()
        self._restore()

    def _restore(self) -> None:
        known = set()
        for split in SPLITS:
            for shard in self.manifest["splits"][split]["shards"]:
                path = self.dir / shard["file"]
                known.add(shard["file"])
                size = shard["tokens"] * self.dtype.itemsize
                if not path.exists() or path.stat().st_size < size:
                    raise RuntimeError(f"{path} is shorter than its manifest says")
                if path.stat().st_size != size:
                    with open(path, "r+b") as f:
                        f.truncate(size)
                        os.fsync(f.fileno())
        for split in SPLITS:
            for path in self.dir.glob(f"{split}-[0-9]*.bin"):
                if path.name not in known:
                    path.unlink()

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
            with open(path, "ab") as f:
                f.write(data[pos : pos + take].tobytes())
            self._touched.add(path)
            last["tokens"] += take
            info["tokens"] += take
            pos += take

    def commit(self, **fields: Any) -> None:
        """fsync what was appended, then record it (and `fields`) in the manifest atomically."""
        for path in sorted(self._touched):
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        if self._touched:
            fsync_dir(self.dir)
        self._touched.clear()
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
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        parts = []
        i, pos = first, start
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
