"""The second pass's commits: what is kept, what is pending, and how a commit lands on disk.

Documents pass the `Filters` (minimum length, exact duplicates by hash) and wait in a
`Batch` with their split. A commit encodes what waits, appends it to the shards, appends
the new duplicate hashes to `seen.bin`, records the phases that ended in it, and writes
the manifest with the source cursor after the last task read, in that order, so a
killed preparation continues from its last commit with the same bytes as one that ran
through.
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from localtrain.config import DataConfig
from localtrain.data.encode import Encoder
from localtrain.data.shards import SEEN_FILE, SPLITS, ShardWriter
from localtrain.data.stream import Doc
from localtrain.data.text import is_val
from localtrain.events import Prepare
from localtrain.files import append, fsync_file, truncate


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def seen_hashes(raw: bytes) -> set[bytes]:
    """The 8-byte hashes of seen.bin, each whole (as numpy S8 items they would lose trailing zero bytes)."""
    return {raw[i:i + 8] for i in range(0, len(raw), 8)}


class Filters:
    """Minimum length and exact-duplicate removal, with drops counted by reason."""

    def __init__(self, data: DataConfig, seen: set[bytes], dropped: dict[str, int]) -> None:
        self.min_chars = data.min_chars
        self.val_fraction = data.val_fraction
        self.seen = seen
        self.new_hashes: list[bytes] = []
        self.dropped: collections.Counter[str] = collections.Counter(dropped)

    def __call__(self, docs: list[Doc]) -> Iterator[tuple[Doc, str]]:
        for doc in docs:
            if self.min_chars and len(doc.text) < self.min_chars:
                self.dropped["short"] += 1
                continue
            h = text_hash(doc.text)
            if h in self.seen:
                self.dropped["duplicate"] += 1
                continue
            self.seen.add(h)
            self.new_hashes.append(h)
            yield doc, doc.split or ("val" if is_val(doc.key, self.val_fraction) else "train")


def documents(manifest: dict[str, Any]) -> int:
    return sum(manifest["splits"][s]["documents"] for s in SPLITS)


def tokens(manifest: dict[str, Any]) -> int:
    return sum(manifest["splits"][s]["tokens"] for s in SPLITS)


def counts_text(manifest: dict[str, Any]) -> str:
    t, v = manifest["splits"]["train"], manifest["splits"]["val"]
    return (f"{t['documents'] + v['documents']:,} documents, {t['tokens']:,} train and {v['tokens']:,} "
            f"validation tokens written")


def phase_event(manifest: dict[str, Any], phase: int) -> Prepare:
    ph = manifest["phases"][phase]
    # (the last phase, which holds every document, is written with documents None)
    what = "every document" if ph["documents"] is None else f"the first {ph['documents']:,} documents"
    return Prepare(
        stage="phase",
        message=f"Phase {phase + 1} of {len(manifest['phases'])} is ready: {what}, {ph['train_tokens']:,} train "
        f"and {ph['val_tokens']:,} validation tokens.",
        documents=ph["documents"] or documents(manifest),
        tokens=ph["train_tokens"] + ph["val_tokens"],
    )


def progress_event(batch: Batch, now: float) -> Prepare:
    """The progress of the second pass: what is written, and how fast this session reads."""
    manifest, dropped = batch.manifest, batch.filters.dropped
    started, kept, input_bytes = batch.session_start
    seconds = now - started
    documents_per_s = (batch.kept - kept) / max(seconds, 1e-9)
    mb_per_s = (manifest["input_bytes"] - input_bytes) / 1e6 / max(seconds, 1e-9)
    return Prepare(
        stage="encode",
        message=f"{counts_text(manifest)}; {documents_per_s:,.0f} documents/s, {mb_per_s:.1f} MB/s of input.",
        documents=documents(manifest),
        bytes=manifest["input_bytes"],
        tokens=tokens(manifest),
        seconds=seconds,
        documents_per_s=documents_per_s,
        mb_per_s=mb_per_s,
        dropped=dict(dropped),
        skipped=sum(dropped.values()),
    )


class Batch:
    """The documents kept since the last commit, and the commit that writes them."""

    def __init__(self, data: DataConfig, directory: Path, manifest: dict[str, Any], eos_id: int) -> None:
        self.manifest, self.eos_id = manifest, eos_id
        self.writer = ShardWriter(directory, manifest)
        self.seen_path = directory / SEEN_FILE
        count = manifest["dedup"]["count"]
        if self.seen_path.stat().st_size != count * 8:
            truncate(self.seen_path, count * 8)  # hashes appended after the last commit
        raw = self.seen_path.read_bytes()[: count * 8]
        self.seen_hash = hashlib.sha256(raw)  # a running sha256, continued at each commit
        self.filters = Filters(data, seen_hashes(raw), manifest["dropped"])
        self.problems: list[str] = list(manifest.get("problems", []))
        self.pending: dict[str, list[str]] = {s: [] for s in SPLITS}
        self.bytes = 0
        self.phases = manifest.get("phases", [])
        self.kept = documents(manifest)  # documents kept so far, committed or pending
        # When this session began, with the documents kept and the input read by then: its rates count from here.
        self.session_start = (time.perf_counter(), self.kept, manifest["input_bytes"])
        # Phase ends met among the pending documents: (phase, pending train count, pending val count).
        self.marks: list[tuple[int, int, int]] = []
        self.upcoming = [i for i, ph in enumerate(self.phases) if not ph["ready"] and ph["documents"] is not None]

    def add(self, docs: list[Doc]) -> None:
        """Keep what passes the filters, marking where a phase ends."""
        for doc, split in self.filters(docs):
            self.pending[split].append(doc.text)
            self.bytes += len(doc.text)
            self.kept += 1
            if self.upcoming and self.kept == self.phases[self.upcoming[0]]["documents"]:
                self.marks.append((self.upcoming.pop(0), len(self.pending["train"]), len(self.pending["val"])))

    def balance(self) -> None:
        """A split left without documents at the end (a corpus of very few) takes the last
        document of the other one, so that both exist."""
        splits = self.manifest["splits"]
        for empty, other in (("val", "train"), ("train", "val")):
            if not splits[empty]["documents"] and not self.pending[empty] and len(self.pending[other]) > 1:
                self.pending[empty].append(self.pending[other].pop())

    def _append(self, encoder: Encoder) -> dict[str, list[int]]:
        """Encode and append the pending texts; the token count at each marked phase end, by split."""
        ends: dict[str, list[int]] = {s: [] for s in SPLITS}
        for i, split in enumerate(SPLITS):
            texts = self.pending[split]
            before = self.manifest["splits"][split]["tokens"]
            ids = encoder.encode(texts) if texts else None
            for mark in self.marks:
                n = min(mark[1 + i], len(texts))
                # Every document ends with the one eos of its own (text never encodes to eos).
                ends[split].append(before + (int(np.flatnonzero(ids == self.eos_id)[n - 1]) + 1 if n else 0))
            if texts:
                info = self.manifest["splits"][split]
                info["documents"] += len(texts)
                info["bytes"] += sum(len(t.encode("utf-8")) for t in texts)
                if "chars" in info:  # (absent from data whose preparation began before characters were counted)
                    info["chars"] += sum(len(t) for t in texts)
                self.writer.append(split, ids)
            self.pending[split] = []
        return ends

    def commit(self, encoder: Encoder, cursor_after: Any) -> list[int]:
        """Write what waits and the manifest with `cursor_after`; the phases that became ready."""
        ends = self._append(encoder)
        ended = [phase for phase, _, _ in self.marks]
        for j, phase in enumerate(ended):
            self.phases[phase].update(ready=True, train_tokens=ends["train"][j], val_tokens=ends["val"][j])
        self.marks.clear()
        self.bytes = 0
        filters = self.filters
        added = b"".join(filters.new_hashes)
        append(self.seen_path, added)
        fsync_file(self.seen_path)
        self.seen_hash.update(added)
        self.manifest["dedup"]["sha256"] = self.seen_hash.hexdigest()
        self.manifest["dedup"]["count"] += len(filters.new_hashes)
        filters.new_hashes.clear()
        self.manifest["sources"][0]["cursor"] = cursor_after
        self.writer.commit(dropped=dict(filters.dropped), problems=self.problems, complete=False)
        return ended
