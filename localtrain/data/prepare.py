"""prepare(): from a data source to a tokenizer and two flat token files, cached.

The cache key is computed from the file listing (names, sizes, modification times)
and the data settings, before anything is read, so a second run on unchanged data
opens the cached files at once. A preparation is written into a temporary sibling
directory and renamed into place only when complete: a killed or concurrent run never
leaves a directory that looks finished.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localtrain.config import DataConfig
from localtrain.data.sources import (
    Document,
    SourceFile,
    cut_text,
    list_files,
    read_corpus,
    resolve_source,
    sample_order,
    split_documents,
)
from localtrain.data.tokenizer import Tokenizer, tokenizer_settings, train_tokenizer
from localtrain.errors import DataError
from localtrain.events import Emit, Prepare
from localtrain.files import fsync_dir, write_synced

FORMAT_VERSION = 1
KEY_FIELDS = (
    "include",
    "exclude",
    "val_fraction",
    "document_bytes",
    "tokenizer",
    "vocab_size",
    "character_coverage",
    "tokenizer_sample_bytes",
)
ENCODE_BATCH_BYTES = 8 << 20  # bounds the Python lists of ids alive at once
STALE_TEMP_SECONDS = 24 * 3600
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]
SPLIT_RULE = (
    "by document: documents ordered by sha256 of their key go to val until val holds "
    "val_fraction of the bytes; each split keeps corpus order; eos_id follows every document"
)


@dataclass(frozen=True)
class PreparedData:
    """A prepared corpus: `tokenizer.model`, `train.bin`, `val.bin` and `meta.json` in one directory.

    The token files are raw little-endian `dtype` arrays, one document after another,
    each followed by the tokenizer's eos_id.
    """

    dir: Path
    tokenizer_path: Path
    train_path: Path
    val_path: Path
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
        """Open a prepared directory through its meta.json."""
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        return cls(
            dir=directory,
            tokenizer_path=directory / "tokenizer.model",
            train_path=directory / "train.bin",
            val_path=directory / "val.bin",
            dtype=meta["dtype"],
            vocab_size=meta["vocab_size"],
            train_tokens=meta["tokens"]["train"],
            val_tokens=meta["tokens"]["val"],
            train_bytes=meta["bytes"]["train"],
            val_bytes=meta["bytes"]["val"],
            tokenizer_sha256=meta["tokenizer_sha256"],
            meta=meta,
        )

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)

    def load(self, split: str) -> np.memmap:
        """The tokens of `split` ("train" or "val") as a read-only memory map."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        path = self.train_path if split == "train" else self.val_path
        return np.memmap(path, dtype=np.dtype(self.dtype).newbyteorder("<"), mode="r")


def cache_root(data: DataConfig) -> Path:
    """Where prepared data lives: data.cache_dir, else $LOCALTRAIN_CACHE, else ~/.cache/localtrain."""
    root = data.cache_dir or os.environ.get("LOCALTRAIN_CACHE") or "~/.cache/localtrain"
    return Path(root).expanduser()


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def cache_key(data: DataConfig, root: Path, files: list[SourceFile], explicit: Set[str]) -> str:
    """sha256 of everything the prepared output depends on, known before reading a file."""
    payload = {
        "format": FORMAT_VERSION,
        "source": str(root.resolve()),
        "files": [[f.relpath, f.size, f.mtime_ns] for f in files],
        "data": {k: getattr(data, k) for k in KEY_FIELDS},
        "vocab_size_explicit": "data.vocab_size" in explicit,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def prepare(
    data: DataConfig, emit: Emit, explicit: Set[str] = frozenset(), threads: int = 0
) -> PreparedData:
    """Read, split, train the tokenizer and encode, or return the cached result.

    `explicit` holds the dotted config keys set on the command line (a default
    vocab_size may shrink to fit a small corpus; an explicit one may not); `threads`
    is the encoder's thread count (0: every core).
    """
    start = time.perf_counter()
    root, include, exclude = resolve_source(data)
    files = list_files(root, include, exclude)
    key = cache_key(data, root, files, explicit)
    parent = cache_root(data) / "data"
    final = parent / key[:20]
    if (final / "meta.json").is_file():
        prepared = PreparedData.from_dir(final)
        _emit_done(emit, prepared, time.perf_counter() - start, cached=True)
        return prepared

    corpus = read_corpus(data, emit, files)
    train_docs, val_docs = split_documents(corpus.documents, data.val_fraction)
    tok = train_tokenizer(tokenizer_sample(train_docs, data.tokenizer_sample_bytes), data, explicit, emit)
    dtype = token_dtype(tok.vocab_size)

    parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(parent)
    tmp = parent / f".tmp-{key[:20]}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        encode_start = time.perf_counter()
        train_tokens = _encode_to_file(tok, train_docs, tmp / "train.bin", dtype, threads)
        val_tokens = _encode_to_file(tok, val_docs, tmp / "val.bin", dtype, threads)
        if train_tokens < 2 or val_tokens < 2:
            raise DataError(
                f"The prepared data of `{root}` has {train_tokens} train and {val_tokens} validation tokens, "
                f"but each split needs at least 2. Give more text, or raise data.val_fraction."
            )
        emit(Prepare(
            stage="encode",
            message=f"Encoded {train_tokens:,} train and {val_tokens:,} validation tokens ({dtype}).",
            documents=len(train_docs) + len(val_docs),
            tokens=train_tokens + val_tokens,
            seconds=time.perf_counter() - encode_start,
        ))
        write_synced(tmp / "tokenizer.model", tok.model_bytes)
        meta = {
            "format": FORMAT_VERSION,
            "cache_key": key,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": data.source,
            "path": str(root.resolve()),
            "files": corpus.files,
            "skipped": corpus.skipped,
            "documents": {"train": len(train_docs), "val": len(val_docs)},
            "bytes": {"train": _text_bytes(train_docs), "val": _text_bytes(val_docs)},
            "tokens": {"train": train_tokens, "val": val_tokens},
            "dtype": dtype,
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "tokenizer": {**tokenizer_settings(data), "vocab_size": tok.vocab_size,
                          "requested_vocab_size": data.vocab_size},
            "tokenizer_sha256": tok.sha256,
            "split": {"rule": SPLIT_RULE, "val_fraction": data.val_fraction,
                      "document_bytes": data.document_bytes},
            "data": {k: getattr(data, k) for k in KEY_FIELDS},
        }
        # meta.json is written last: a directory without it is never taken for a finished one.
        write_synced(tmp / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8"))
        _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    prepared = PreparedData.from_dir(final)
    _emit_done(emit, prepared, time.perf_counter() - start, cached=False)
    return prepared


def tokenizer_sample(train_docs: list[Document], limit_bytes: int) -> list[str]:
    """A reproducible sample of at most `limit_bytes`: train documents in sha256-of-key order."""
    sample: list[str] = []
    total = 0
    for doc in sample_order(train_docs):
        size = len(doc.text.encode("utf-8"))
        if total + size > limit_bytes:
            rest = limit_bytes - total
            if rest > 0:
                sample.append(cut_text(doc.text, rest)[0])
            break
        sample.append(doc.text)
        total += size
    return sample


def _text_bytes(docs: list[Document]) -> int:
    return sum(len(d.text.encode("utf-8")) for d in docs)


def _encode_to_file(tok: Tokenizer, docs: list[Document], path: Path, dtype: str, threads: int) -> int:
    le = np.dtype(dtype).newbyteorder("<")
    written = 0
    with open(path, "wb") as f:
        for batch in _batches(docs):
            ids = tok.encode_batch([d.text for d in batch], threads)
            out = np.empty(sum(len(x) + 1 for x in ids), dtype=le)
            pos = 0
            for x in ids:
                out[pos : pos + len(x)] = x
                out[pos + len(x)] = tok.eos_id
                pos += len(x) + 1
            f.write(out.tobytes())
            written += len(out)
        f.flush()
        os.fsync(f.fileno())
    return written


def _batches(docs: list[Document]) -> list[list[Document]]:
    batches: list[list[Document]] = [[]]
    size = 0
    for d in docs:
        if batches[-1] and size >= ENCODE_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(d)
        size += len(d.text)
    return batches


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / "meta.json").is_file():
            return  # a concurrent preparation of the same data finished first; keep its result
        # A directory without meta.json is not a finished preparation (one removed by hand).
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    fsync_dir(final.parent)


def _clean_stale_temps(parent: Path) -> None:
    # Temporary directories of killed preparations: on this host, those whose process is
    # gone; on a shared cache, any other host's once they are a day old.
    now = time.time()
    for entry in parent.glob(".tmp-*"):
        try:
            _, _, host, pid_text, _ = entry.name.split("-")
            pid = int(pid_text)
            age = now - entry.stat().st_mtime
        except (ValueError, OSError):
            continue
        dead = host == _HOST and pid != os.getpid() and not _alive(pid)
        if dead or age > STALE_TEMP_SECONDS:
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    if sys.platform == "win32":
        return True  # os.kill would terminate it there; rely on the age rule instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _emit_done(emit: Emit, prepared: PreparedData, seconds: float, cached: bool) -> None:
    meta = prepared.meta
    where = "Using cached" if cached else "Prepared"
    emit(Prepare(
        stage="done",
        message=f"{where} data in {prepared.dir}: {prepared.train_tokens:,} train and "
        f"{prepared.val_tokens:,} validation tokens, vocabulary {prepared.vocab_size}.",
        files=meta["files"],
        documents=meta["documents"]["train"] + meta["documents"]["val"],
        bytes=prepared.train_bytes + prepared.val_bytes,
        skipped=len(meta["skipped"]),
        tokens=prepared.train_tokens + prepared.val_tokens,
        seconds=seconds,
        cached=cached,
    ))

