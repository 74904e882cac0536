"""Encoding documents to token arrays, in this process or in worker processes.

Each worker loads the tokenizer once and encodes whole chunks of documents into one
array (every document followed by the eos id), so what crosses between processes is
text one way and packed ids the other. The result does not depend on the number of
workers: chunks come back in order.
"""

from __future__ import annotations

import numpy as np
import sentencepiece as spm

from localtrain.data.stream import pool_context

_worker_sp: spm.SentencePieceProcessor | None = None


def _init(model: bytes) -> None:
    global _worker_sp
    _worker_sp = spm.SentencePieceProcessor(model_proto=model)


def _pack(sp: spm.SentencePieceProcessor, texts: list[str], dtype: str) -> np.ndarray:
    ids = sp.encode(texts, num_threads=1)
    eos = sp.eos_id()
    out = np.empty(sum(len(x) + 1 for x in ids), dtype=np.dtype(dtype).newbyteorder("<"))
    pos = 0
    for x in ids:
        out[pos : pos + len(x)] = x
        out[pos + len(x)] = eos
        pos += len(x) + 1
    return out


def _encode_chunk(texts: list[str], dtype: str) -> np.ndarray:
    assert _worker_sp is not None
    return _pack(_worker_sp, texts, dtype)


class Encoder:
    """Encodes lists of documents with `workers` processes (1: in this process)."""

    def __init__(self, model: bytes, dtype: str, workers: int = 1) -> None:
        self.dtype, self.workers = dtype, max(1, workers)
        self._sp = spm.SentencePieceProcessor(model_proto=model)
        self._pool = pool_context().Pool(self.workers, _init, (model,)) if self.workers > 1 else None

    def encode(self, texts: list[str]) -> np.ndarray:
        """Token ids of `texts`, each followed by eos, as one little-endian array."""
        if self._pool is None or len(texts) < 2:  # (no text packs to an empty array)
            return _pack(self._sp, texts, self.dtype)
        # Chunks of about equal text size, a few per worker, in document order.
        total = sum(len(t) for t in texts)
        target = max(1, total // (self.workers * 4))
        chunks: list[list[str]] = [[]]
        size = 0
        for t in texts:
            if chunks[-1] and size >= target:
                chunks.append([])
                size = 0
            chunks[-1].append(t)
            size += len(t)
        parts = self._pool.starmap(_encode_chunk, [(c, self.dtype) for c in chunks])
        return np.concatenate(parts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
