"""Prepared data as it lies in its directory: opening it through its manifest, loading a
split's shards, and the summaries of every finished preparation in a cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localtrain.data.commit import documents, tokens
from localtrain.data.shards import MANIFEST, SPLITS, DamagedData, ShardedTokens, read_manifest
from localtrain.data.tokenizer import Tokenizer
from localtrain.errors import DataError


@dataclass(frozen=True)
class PreparedData:
    """A prepared corpus: `tokenizer.model`, the token shards of each split and `manifest.json`."""

    dir: Path
    tokenizer_path: Path
    dtype: str
    vocab_size: int
    train_tokens: int
    val_tokens: int
    train_bytes: int
    val_bytes: int
    tokenizer_sha256: str
    meta: dict[str, Any]

    @classmethod
    def from_dir(cls, directory: Path) -> PreparedData:
        """Open a prepared directory through its manifest.json."""
        meta = read_manifest(directory)
        if meta is None:
            raise DataError(f"`{directory}` holds no manifest.json: it is not prepared data. Run `localtrain "
                            f"prepare --out {directory}` to prepare it.")
        try:
            splits = meta["splits"]
            return cls(
                dir=directory,
                tokenizer_path=directory / "tokenizer.model",
                dtype=meta["dtype"],
                vocab_size=meta["vocab_size"],
                train_tokens=splits["train"]["tokens"],
                val_tokens=splits["val"]["tokens"],
                train_bytes=splits["train"]["bytes"],
                val_bytes=splits["val"]["bytes"],
                tokenizer_sha256=meta["tokenizer_sha256"],
                meta=meta,
            )
        except (KeyError, TypeError) as exc:
            raise DamagedData(f"{directory / MANIFEST} lacks {exc}: it is damaged. Prepare it again (`localtrain "
                              f"prepare`, or a run on the same data, moves it aside).") from exc

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)

    def shards(self, split: str) -> list[Path]:
        return [self.dir / s["file"] for s in self.meta["splits"][split]["shards"]]

    def load(self, split: str, limit: int | None = None) -> ShardedTokens:
        """The tokens of `split` ("train" or "val"), or their first `limit`: its shards seen as one
        read-only array."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        counts = [s["tokens"] for s in self.meta["splits"][split]["shards"]]
        if limit is not None:
            ends = np.minimum(np.cumsum(counts), limit)
            counts = np.diff(ends, prepend=0).tolist()
        return ShardedTokens(self.shards(split), counts, self.dtype)

    @property
    def phases(self) -> list[dict[str, Any]]:
        """The progressive phases the manifest records (empty without data.phases)."""
        return self.meta.get("phases", [])


def text_per_token(meta: dict[str, Any]) -> tuple[float | None, float | None]:
    """(characters, UTF-8 bytes) of text per token of a manifest's splits, leaving out the eos that
    ends each document; characters are None for data prepared before they were counted."""
    splits = [meta["splits"][s] for s in SPLITS]
    tokens = sum(s["tokens"] - s["documents"] for s in splits)
    if tokens <= 0:
        return None, None
    chars = sum(s["chars"] for s in splits) / tokens if all("chars" in s for s in splits) else None
    return chars, sum(s["bytes"] for s in splits) / tokens


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def cached_summaries(root: Path) -> list[dict[str, Any]]:
    """What each finished preparation in the cache under `root` holds: source, tokenizer, documents,
    tokens and the text per token, newest first (for `localtrain doctor`)."""
    rows = []
    for path in sorted((root / "data").glob("*/manifest.json")):
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if not meta.get("complete"):
                continue
            chars, nbytes = text_per_token(meta)
            tok = meta.get("tokenizer", {})
            rows.append({"dir": str(path.parent), "created": meta.get("created", ""), "source": meta.get("source"),
                         "tokenizer": tok.get("model_type"), "vocab_size": meta.get("vocab_size"),
                         "character_coverage": tok.get("character_coverage"), "documents": documents(meta),
                         "tokens": tokens(meta), "chars_per_token": chars, "bytes_per_token": nbytes})
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a manifest being written, or not one of ours
    return sorted(rows, key=lambda r: r["created"], reverse=True)
