"""prepare(): from a data source to a tokenizer and token shards, resumable and cached.

The work happens in one directory (in the cache, keyed by the source and the data
settings, or the one given to `localtrain prepare --out`):

1. A first pass reads documents until it holds `data.tokenizer_sample_bytes` of the
   training split (the first ones in source order, so the sample is reproducible and
   memory stays bounded) and trains the tokenizer; `tokenizer.model` and a first
   `manifest.json` are written.
2. The second pass reads the source from the manifest's cursor. Documents are cleaned
   (in worker processes), filtered (minimum length, exact duplicates by hash), given a
   split by the hash of their key, encoded (in worker processes) and appended to the
   shards. After every ~1 MB of text the shards, the duplicate hashes and the manifest
   (with the source cursor after the last task read) are committed (and at least every
   two seconds), so a killed run
   continues from its last commit and ends with the same bytes as an uninterrupted one.

A directory whose manifest says `complete` is the cache hit: a second run on unchanged
inputs returns it without reading the source, once every byte of it has been verified
against the manifest's sha256s (`integrity.py`). A directory that fails is moved aside,
with a warning naming it, and prepared again. The directory carries the `prepared`
marker (`preparedir.py`): localtrain prepares only into a new or empty directory, one it
marked, or one a localtrain without markers prepared (it holds a manifest), and deletes
nothing there but the shards it wrote past its last commit.

Progressive phases (`data.phases`, e.g. [100000, 1000000]): phase k holds the first
N_k kept documents in source order, and a last phase holds them all. The manifest
records, for each phase, the train and validation token counts at the end of its last
document, committed together with the shards that hold them, so a trainer can open the
first phase while later ones are still being written (`phases.py`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from localtrain.config import DataConfig
from localtrain.data import preparedir
from localtrain.data.commit import Batch, Filters, counts_text, documents, phase_event, progress_event, tokens
from localtrain.data.encode import Encoder
from localtrain.data.paths import prepared_root
from localtrain.data.prepared import PreparedData, text_per_token, token_dtype
from localtrain.data.shards import SEEN_FILE, SHARD_FILE, SPLITS, DamagedData, write_manifest
from localtrain.data.sources import SourceSpec, source_spec
from localtrain.data.stream import Doc, Source, run_tasks, worker_count
from localtrain.data.text import cut_text
from localtrain.data.tokenizer import Tokenizer, tokenizer_settings, train_tokenizer
from localtrain.errors import DataError
from localtrain.events import Emit, Prepare, Warning
from localtrain.files import Appender, remove_file, write_atomic

FORMAT_VERSION = 2
KEY_FIELDS = (
    "include",
    "exclude",
    "val_fraction",
    "document_bytes",
    "tokenizer",
    "vocab_size",
    "character_coverage",
    "tokenizer_sample_bytes",
    "min_chars",
    "shard_tokens",
)
COMMIT_BYTES = 1 << 20
COMMIT_SECONDS = 2.0  # a slow source still commits often (where the shards stand does not depend on it)
PROGRESS_SECONDS = 1.0
SPLIT_RULE = (
    "by document: a document goes to val when the first 8 bytes of the sha256 of its key, read as a "
    "big-endian fraction of 2**64, are below val_fraction (a split that ends up without documents takes "
    "the last one of the other; a corpus of a few dozen documents has its validation documents spread evenly "
    "through it instead); each split keeps source order; eos_id follows every document"
)
SHOWN = 5


def cache_key(data: DataConfig, spec: SourceSpec) -> str:
    """sha256 of everything the prepared output depends on, known before reading the source."""
    payload = {
        "format": FORMAT_VERSION,
        "source": spec.fingerprint,
        "data": {k: getattr(data, k) for k in KEY_FIELDS},
        # (named so because the key predates data.vocab_fit: prepared data keeps its key)
        "vocab_size_explicit": data.vocab_fit == "exact",
    }
    if data.phases:  # (data without phases keeps the key it had before phases existed)
        payload["phases"] = list(data.phases)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _directory(data: DataConfig, key: str, out_dir: Path | str | None) -> Path:
    return Path(out_dir).expanduser() if out_dir else prepared_root(data) / key[:20]


def prepared_dir(data: DataConfig) -> Path:
    """The cache directory `prepare` writes `data` into."""
    return _directory(data, cache_key(data, source_spec(data)), None)


class StopRequest(Protocol):
    """Asks a preparation to stop: checked after every unit of work read."""

    def is_set(self) -> bool: ...


class Cancelled(Exception):
    """A preparation stopped on request after committing what it had read; running it again continues."""


def prepare(
    data: DataConfig,
    emit: Emit,
    threads: int = 0,
    out_dir: Path | str | None = None,
    cancel: StopRequest | None = None,
    progress_seconds: float = PROGRESS_SECONDS,
) -> PreparedData:
    """Prepare `data` into token shards (or continue or reuse an earlier preparation).

    `threads` is the number of worker processes for cleaning and encoding (0: every core); `out_dir`
    is the directory to prepare into instead of the cache. Setting `cancel` stops the
    work at the next unit read, after a commit (raising `Cancelled`); `progress_seconds`
    spaces the progress events.
    """
    start = time.perf_counter()
    spec = source_spec(data)
    key = cache_key(data, spec)
    directory = _directory(data, key, out_dir)
    with preparedir.opened(directory, key, out_dir, spec, emit, threads) as (manifest, verified):
        if manifest is not None and manifest.get("complete"):
            prepared = PreparedData.from_dir(directory)
            _emit_done(emit, prepared, time.perf_counter() - start, cached=True, note=verified)
            return prepared
        source = spec.open(emit)
        workers = worker_count(threads)
        if manifest is None:
            manifest = _start(data, directory, key, spec, source, emit, workers, cancel)
        else:
            emit(Prepare(stage="resume", message=f"Continuing the preparation in {directory} from "
                         f"{counts_text(manifest)}.", documents=documents(manifest),
                         tokens=tokens(manifest)))
        _encode_pass(data, directory, manifest, source, emit, workers, cancel, progress_seconds)
    prepared = PreparedData.from_dir(directory)
    _emit_done(emit, prepared, time.perf_counter() - start, cached=False)
    return prepared


def _start(data: DataConfig, directory: Path, key: str, spec: SourceSpec, source: Source, emit: Emit,
           workers: int, cancel: StopRequest | None = None) -> dict[str, Any]:
    """Pass 1: the tokenizer sample, the tokenizer, and the first (empty) manifest."""
    for stale in directory.iterdir():
        if SHARD_FILE.fullmatch(stale.name):
            remove_file(stale)  # shards of a preparation killed before its first manifest
    sample, read = tokenizer_sample(data, source, workers, cancel)
    if not sample:
        raise DataError(_no_documents(source, read))
    emit(Prepare(stage="read", message=f"Read {read['documents']:,} documents ({read['bytes']:,} bytes of input) "
                 f"from {source.name} for the tokenizer sample of {sum(len(s) for s in sample):,} characters.",
                 files=read["tasks"], documents=read["documents"], bytes=read["bytes"],
                 skipped=sum(read["dropped"].values()), dropped=dict(read["dropped"])))
    tok = train_tokenizer(sample, data, emit)
    del sample
    # The coverage the tokenizer was trained at: data.character_coverage, or the one chosen from the sample.
    used = dataclasses.replace(data, character_coverage=tok.character_coverage or data.character_coverage)
    write_atomic(directory / "tokenizer.model", tok.model_bytes)
    manifest = {
        "format": FORMAT_VERSION,
        "cache_key": key,
        "complete": False,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": data.source,
        "sources": [{"name": source.name, "kind": source.kind, "fingerprint": spec.fingerprint, "cursor": None}],
        "dtype": token_dtype(tok.vocab_size),
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "tokenizer": {**tokenizer_settings(used), "vocab_size": tok.vocab_size,
                      "requested_vocab_size": data.vocab_size},
        "tokenizer_sha256": tok.sha256,
        "shard_tokens": data.shard_tokens,
        "split": {"rule": SPLIT_RULE, "val_fraction": data.val_fraction, "document_bytes": data.document_bytes},
        "splits": {s: {"shards": [], "tokens": 0, "documents": 0, "bytes": 0, "chars": 0} for s in SPLITS},
        "dedup": {"file": SEEN_FILE, "count": 0, "sha256": hashlib.sha256(b"").hexdigest()},
        "dropped": {},
        "problems": [],
        "input_bytes": 0,
        "data": {k: getattr(data, k) for k in KEY_FIELDS},
    }
    if data.phases:
        manifest["phases"] = [{"documents": n, "ready": False, "train_tokens": 0, "val_tokens": 0}
                              for n in [*data.phases, None]]
    Appender(directory / SEEN_FILE, truncate=True).close()
    write_manifest(directory, manifest)
    return manifest


def tokenizer_sample(data: DataConfig, source: Source, workers: int,
                     cancel: StopRequest | None = None) -> tuple[list[str], dict[str, Any]]:
    """The first `data.tokenizer_sample_bytes` of training text, in source order, after the filters."""
    filters = Filters(data, set(), {})
    sample: list[str] = []
    total = 0
    read: dict[str, Any] = {"tasks": 0, "documents": 0, "bytes": 0}
    tasks = source.tasks(None)
    try:
        for result, _ in run_tasks(tasks, workers):
            if cancel is not None and cancel.is_set():
                raise Cancelled("The preparation stopped on request while reading the tokenizer sample.")
            read["tasks"] += 1
            read["bytes"] += result.bytes
            read["documents"] += len(result.docs)
            filters.dropped.update(result.dropped)
            for doc, split in filters(result.docs):
                if split != "train":
                    continue
                size = len(doc.text.encode("utf-8"))
                if total + size > data.tokenizer_sample_bytes:
                    rest = data.tokenizer_sample_bytes - total
                    if rest > 0:
                        sample.append(cut_text(doc.text, rest)[0])
                    total = data.tokenizer_sample_bytes
                    break
                sample.append(doc.text)
                total += size
            if total >= data.tokenizer_sample_bytes:
                break
    finally:
        tasks.close()
    read["dropped"] = dict(filters.dropped)
    return sample, read


def _no_documents(source: Source, read: dict[str, Any]) -> str:
    dropped = ", ".join(f"{n:,} {reason}" for reason, n in sorted(read["dropped"].items())) or "none"
    problems = " ".join(source.problems())
    return (
        f"The data source `{source.name}` yields no documents to train on: {read['tasks']:,} unit(s) read "
        f"({read['bytes']:,} bytes), {read['documents']:,} document(s) found, dropped by reason: {dropped}. "
        f"{problems + ' ' if problems else ''}Point --data at UTF-8 text, a directory of it, a MediaWiki dump or "
        f"a JSONL file with a `text` field, or read more of it: --set 'data.include=[\"*.txt\",\"*.md\"]', "
        f"--set 'data.exclude=[]' or --set data.min_chars=0."
    )


def _encode_pass(data: DataConfig, directory: Path, manifest: dict[str, Any], source: Source, emit: Emit,
                 workers: int, cancel: StopRequest | None, progress_seconds: float) -> None:
    """Pass 2: read from the manifest's cursor, filter, encode and append, committing as it goes."""
    tok = Tokenizer.load(directory / "tokenizer.model")
    if tok.sha256 != manifest["tokenizer_sha256"]:
        raise DamagedData(f"`{directory / 'tokenizer.model'}` is not the tokenizer its manifest names.")
    batch = Batch(data, directory, manifest, tok.eos_id)
    with Encoder(tok.model_bytes, manifest["dtype"], workers) as encoder:
        cursor = _read_and_commit(batch, encoder, source, emit, workers, cancel, progress_seconds)
        batch.problems.extend(p for p in source.problems() if p not in batch.problems)
        batch.balance()
        batch.commit(encoder, cursor)
    for problem in batch.problems:
        emit(Warning(message=problem, code="source_problem"))
    _warn_skipped(batch.filters.dropped, batch.problems, emit)
    _check_splits(manifest, source)
    emit(progress_event(batch, time.perf_counter()))
    _finish_phases(batch, source, emit)


def _read_and_commit(batch: Batch, encoder: Encoder, source: Source, emit: Emit, workers: int,
                     cancel: StopRequest | None, progress_seconds: float) -> Any:
    """Read every task from the cursor on, committing after ~COMMIT_BYTES of text, COMMIT_SECONDS, the
    end of a phase or a stop request; the cursor after the last task read."""
    manifest = batch.manifest
    cursor = manifest["sources"][0]["cursor"]
    last_event = last_commit = batch.session_start[0]
    for result, cursor_after in run_tasks(source.tasks(cursor), workers):
        batch.filters.dropped.update(result.dropped)
        batch.problems.extend(result.problems)
        manifest["input_bytes"] += result.bytes
        batch.add(result.docs)
        cursor = cursor_after
        stopping = cancel is not None and cancel.is_set()
        if batch.marks or stopping or batch.bytes >= COMMIT_BYTES or (
                batch.bytes and time.perf_counter() - last_commit >= COMMIT_SECONDS):
            ended = batch.commit(encoder, cursor)
            last_commit = time.perf_counter()
            for phase in ended:
                emit(phase_event(manifest, phase))
            if stopping:
                raise Cancelled(f"The preparation in {batch.writer.dir} stopped on request at "
                                f"{counts_text(manifest)}.")
            now = time.perf_counter()
            if now - last_event >= progress_seconds:
                last_event = now
                emit(progress_event(batch, now))
    return cursor


def _check_splits(manifest: dict[str, Any], source: Source) -> None:
    train_tokens = manifest["splits"]["train"]["tokens"]
    val_tokens = manifest["splits"]["val"]["tokens"]
    if train_tokens < 2 or val_tokens < 2:
        raise DataError(
            f"The prepared data of `{source.name}` has {train_tokens} train and {val_tokens} validation tokens, "
            f"but each split needs at least 2. Give more text, or hold out more of it with --set "
            f"data.val_fraction=0.2 (the split is drawn by document, so a corpus of few documents may leave one "
            f"split empty; --set data.document_bytes=4096 cuts files into more documents)."
        )


def _finish_phases(batch: Batch, source: Source, emit: Emit) -> None:
    """Phases the corpus did not reach, and the last one, hold every document; the manifest says complete."""
    manifest, phases = batch.manifest, batch.phases
    train_tokens = manifest["splits"]["train"]["tokens"]
    val_tokens = manifest["splits"]["val"]["tokens"]
    late = [i for i, ph in enumerate(phases) if not ph["ready"]]
    short = [phases[i]["documents"] for i in late if phases[i]["documents"] is not None]
    for i in late:
        phases[i].update(ready=True, train_tokens=train_tokens, val_tokens=val_tokens)
    batch.writer.commit(complete=True)
    if short:
        emit(Warning(message=f"data.phases asks for phases of {', '.join(f'{n:,}' for n in short)} documents, but "
                     f"the source `{source.name}` has {documents(manifest):,} to keep: those phases hold every "
                     f"document.", code="short_phases"))
    for i in late:
        emit(phase_event(manifest, i))


def _warn_skipped(dropped: dict[str, int], problems: list[str], emit: Emit) -> None:
    if dropped.get("not_utf8"):
        names = [p for p in problems if "not UTF-8" in p]
        emit(Warning(message=f"Skipped {dropped['not_utf8']} file(s) that are not UTF-8 text or contain NUL "
                     f"bytes: {', '.join(names[:SHOWN])}.", code="skipped_files"))


def _emit_done(emit: Emit, prepared: PreparedData, seconds: float, cached: bool, note: str = "") -> None:
    how = "Using the cached" if cached else "Prepared"
    meta = prepared.meta
    dropped = meta.get("dropped", {})
    chars, nbytes = text_per_token(meta)
    per_token = ""
    if nbytes is not None:
        per_token = (f", {chars:.2f} characters ({nbytes:.2f} bytes) per token" if chars is not None
                     else f", {nbytes:.2f} bytes per token")
    val = meta["splits"]["val"]
    share = val["bytes"] / max(1, prepared.train_bytes + prepared.val_bytes)
    emit(Prepare(
        stage="done",
        message=f"{how} data in {prepared.dir}: {prepared.train_tokens:,} train and {prepared.val_tokens:,} "
        f"validation tokens in {sum(len(meta['splits'][s]['shards']) for s in SPLITS)} shards, vocabulary "
        f"{prepared.vocab_size}{per_token}{note}; validation holds {val['documents']:,} of "
        f"{documents(meta):,} documents ({share:.1%} of the text).",
        chars_per_token=chars or 0.0,
        bytes_per_token=nbytes or 0.0,
        documents=documents(meta),
        tokens=prepared.train_tokens + prepared.val_tokens,
        bytes=prepared.train_bytes + prepared.val_bytes,
        seconds=seconds,
        cached=cached,
        dropped=dict(dropped),
        skipped=sum(dropped.values()),
    ))


def iter_documents(data: DataConfig, emit: Emit, threads: int = 0) -> Iterator[tuple[Doc, str]]:
    """Every document the preparation keeps, with its split, in source order (for --emit-text)."""
    source = source_spec(data).open(emit)
    filters = Filters(data, set(), {})
    tasks = source.tasks(None)
    try:
        for result, _ in run_tasks(tasks, worker_count(threads)):
            yield from filters(result.docs)
    finally:
        tasks.close()
    for problem in source.problems():
        emit(Warning(message=problem, code="source_problem"))
