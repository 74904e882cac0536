"""Where the text comes from: resolving a source, listing its files and reading them.

A source is a named corpus (only `python-stdlib` lives on every machine) or a path to
a file or a directory. A directory is walked in sorted order and filtered with the
config's include/exclude globs; every file becomes one or more `Document`s, and the
train/validation split is drawn by document so the same text never lands in both.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
import re
import stat
import sysconfig
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlparse

from localtrain.config import DataConfig
from localtrain.errors import DataError
from localtrain.events import Emit, Prepare, Warning

# Named corpora that are downloaded when first prepared (see inputs.NAMED for where from).
DOWNLOADABLE = {
    "tinyshakespeare": "the `input.txt` file of Karpathy's char-rnn tinyshakespeare",
    "wikitext-103": "the WikiText-103 raw text files (wiki.train.raw and friends)",
    "enwiki": "a Wikipedia dump or a folder of extracted article text",
}
SKIPPED_NAMES_SHOWN = 5


@dataclass(frozen=True)
class Document:
    """One unit of the train/validation split: a file or a piece of a long file."""

    key: str
    text: str


@dataclass
class Corpus:
    """The documents read from a source, with counts for reports and errors."""

    root: Path
    documents: list[Document]
    files: int
    bytes: int
    skipped: list[str]


@dataclass(frozen=True)
class SourceFile:
    """A file that matched the include/exclude globs, as listed before reading it."""

    relpath: str
    path: Path
    size: int
    mtime_ns: int


def resolve_source(data: DataConfig) -> tuple[Path, list[str], list[str]]:
    """The path of `data.source` on this machine, with the include and exclude globs to apply."""
    name = data.source.strip()
    if not name:
        raise DataError(
            "No data to train on: data.source is empty (the text preset trains on text you give it). Pass "
            "--data PATH: a text, Markdown, reStructuredText or HTML file, or a folder of them (code too)."
        )
    if name == "python-stdlib":
        return Path(sysconfig.get_paths()["stdlib"]), list(data.include), list(data.exclude)
    lowered = name.lower()
    remote = lowered in DOWNLOADABLE or lowered.startswith(("hf:", "http://", "https://"))
    if remote and not Path(name).expanduser().exists():
        # Fetched when the data is prepared: the path it will have in the cache's downloads.
        from localtrain.data.inputs import NAMED, download_path

        target = NAMED.get(lowered, name)
        if target.lower().startswith("hf:"):
            return Path(target[3:]), list(data.include), list(data.exclude)
        return download_path(data, target), list(data.include), list(data.exclude)
    path = Path(name).expanduser()
    if not path.exists() and glob.has_magic(name):
        from localtrain.data.inputs import _glob_root

        root, pattern = _glob_root(name)
        if root.is_dir():
            return root, [pattern, *data.include], list(data.exclude)
    if not path.exists():
        raise DataError(
            f"The data source `{name}` is not a named source and the path `{path}` does not exist. "
            f"Check the path, or pass `--data PATH` to a text file or a directory of text files."
        )
    return path, list(data.include), list(data.exclude)


def matches(relpath: str, pattern: str) -> bool:
    """Whether a relative POSIX path matches one glob.

    `fnmatch` against the whole path (where `*` also crosses `/`), and, for a pattern
    without `/`, against the name of the file or of any directory above it; a pattern
    that matches a directory matches everything under it.
    """
    pattern = pattern.strip().rstrip("/")
    if not pattern:
        return False
    parts = relpath.split("/")
    plain = "/" not in pattern
    for i in range(1, len(parts) + 1):
        if fnmatchcase("/".join(parts[:i]), pattern) or (plain and fnmatchcase(parts[i - 1], pattern)):
            return True
    return False


def _selected(relpath: str, include: list[str], exclude: list[str]) -> bool:
    if include and not any(matches(relpath, p) for p in include):
        return False
    return not any(matches(relpath, p) for p in exclude)


def _pruned(reldir: str, exclude: list[str]) -> bool:
    # A pattern ending in `*` that matches "dir/" matches every path under it, so the
    # walk can skip the directory (site-packages under the stdlib holds torch).
    probe = reldir + "/"
    patterns = [p.strip() for p in exclude]
    return any(matches(reldir, p) or (p.endswith("*") and fnmatchcase(probe, p)) for p in patterns)


def list_files(root: Path, include: list[str], exclude: list[str]) -> list[SourceFile]:
    """The files of a source that the globs select, in sorted order, without reading them.

    A file source is that one file (globs do not apply). A directory is walked through
    symlinked directories once each; hidden entries and `__pycache__` are skipped.
    """
    if root.is_file():
        st = root.stat()
        return [SourceFile(root.name, root, st.st_size, st.st_mtime_ns)]
    found: list[SourceFile] = []
    seen: set[object] = set()

    def walk(directory: Path, reldir: str) -> None:
        try:
            st = directory.stat()
        except OSError:
            return
        # Some filesystems report inode 0 for everything; the resolved path stands in there.
        identity = (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(directory)
        if identity in seen:
            return  # a symlink loop, or a second link to a directory already read
        seen.add(identity)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            rel = f"{reldir}/{entry.name}" if reldir else entry.name
            try:
                est = entry.stat()  # follows symlinks; a dangling one is skipped
            except OSError:
                continue
            if stat.S_ISDIR(est.st_mode):
                if not _pruned(rel, exclude):
                    walk(Path(entry.path), rel)
            elif stat.S_ISREG(est.st_mode) and _selected(rel, include, exclude):
                found.append(SourceFile(rel, Path(entry.path), est.st_size, est.st_mtime_ns))

    walk(root, "")
    found.sort(key=lambda f: f.relpath)
    return found


def decode_text(raw: bytes) -> str | None:
    """UTF-8 text with newlines normalised to `\\n` and no BOM; None for binary or non-UTF-8 bytes."""
    if b"\x00" in raw:
        return None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


# Where a line longer than a document may be cut, best first: after a sentence's end (in
# any script: 。！？ as well as . ! ?), then after a space; else between two characters.
_SENTENCE_END = re.compile(r"[.!?;…][\"'”’)\]]*\s+|[。！？；][」』）”’)]*\s*")
_SPACE = re.compile(r"\s+")


def _cut_line(line: str, limit: int) -> list[str]:
    """A line of more than `limit` UTF-8 bytes in pieces of at most `limit` bytes each,
    each ending at a sentence end or a space in its second half when there is one."""
    pieces: list[str] = []
    start = 0
    while start < len(line):
        window = line[start : start + limit]  # a character is at least one byte
        encoded = window.encode("utf-8")
        if len(encoded) <= limit and start + len(window) == len(line):
            pieces.append(window)
            break
        fits = encoded[:limit].decode("utf-8", "ignore")  # the longest whole-character prefix
        half = len(encoded[: limit // 2].decode("utf-8", "ignore"))
        cut = len(fits)
        for rule in (_SENTENCE_END, _SPACE):
            ends = [m.end() for m in rule.finditer(fits, half)]
            if ends:
                cut = ends[-1]
                break
        cut = max(cut, 1)  # a bound below one character's bytes still moves on
        pieces.append(line[start : start + cut])
        start += cut
    return pieces


def cut_text(text: str, document_bytes: int) -> list[str]:
    """Pieces of at most `document_bytes` UTF-8 bytes each, cut after line breaks, joining back into `text`.

    A single line longer than that is cut after a sentence end or a space near the bound,
    or between two characters when it has neither (Chinese or Japanese text needs no
    spaces to be cut, and is cut at 。 like English at a full stop), so every script
    splits into documents of the same bounded size.
    """
    if len(text) <= document_bytes // 4 or len(text.encode("utf-8")) <= document_bytes:
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if current and size + n > document_bytes:
            pieces.append("".join(current))
            current, size = [], 0
        if n > document_bytes:
            pieces.extend(_cut_line(line, document_bytes))
            continue
        current.append(line)
        size += n
    if current:
        pieces.append("".join(current))
    return pieces


def read_corpus(data: DataConfig, emit: Emit, files: list[SourceFile] | None = None) -> Corpus:
    """Read the source into documents; emit a `Prepare(stage="read")` event.

    `files` is the listing from `list_files` when the caller already has one.
    """
    root, include, exclude = resolve_source(data)
    if files is None:
        files = list_files(root, include, exclude)
    documents: list[Document] = []
    skipped: list[str] = []
    total = 0
    for f in files:
        try:
            raw = f.path.read_bytes()
        except OSError as exc:
            raise DataError(
                f"The file `{f.path}` of the data source could not be read ({exc.strerror or exc}). "
                f"Check its permissions, or leave it out with --set 'data.exclude=[\"{f.relpath}\"]'."
            ) from exc
        text = decode_text(raw)
        if text is None:
            skipped.append(f.relpath)
            continue
        for i, piece in enumerate(cut_text(text, data.document_bytes)):
            if piece.strip():
                documents.append(Document(f"{f.relpath}#{i}", piece))
                total += len(piece.encode("utf-8"))
    if skipped:
        shown = ", ".join(skipped[:SKIPPED_NAMES_SHOWN]) + (", ..." if len(skipped) > SKIPPED_NAMES_SHOWN else "")
        emit(Warning(
            message=f"Skipped {len(skipped)} file(s) of `{root}` that are not UTF-8 text or contain NUL bytes: {shown}.",
            code="skipped_files",
        ))
    if not documents and not root.is_dir():
        what = "is not UTF-8 text or contains NUL bytes" if skipped else "is empty or whitespace only"
        raise DataError(
            f"The data source `{root}` has no text to train on: the file {what}. Point --data at a "
            f"UTF-8 text file or a directory of them."
        )
    if not documents:
        raise DataError(
            f"The data source `{root}` has no text to train on: {len(files)} file(s) matched the "
            f"include/exclude patterns (include {include or 'everything'}, exclude {exclude or 'nothing'}), "
            f"{len(skipped)} of them were skipped as not UTF-8 text or containing NUL bytes, and the rest "
            f"were empty or whitespace only. Point --data at a directory of UTF-8 text, or change "
            f"data.include / data.exclude (for example --set 'data.include=[\"*.md\",\"*.txt\"]')."
        )
    emit(Prepare(
        stage="read",
        message=f"Read {len(files) - len(skipped)} files ({total:,} bytes) from {root} into {len(documents)} documents.",
        files=len(files) - len(skipped),
        documents=len(documents),
        bytes=total,
        skipped=len(skipped),
    ))
    return Corpus(root, documents, len(files) - len(skipped), total, skipped)


def _order_key(doc: Document) -> bytes:
    return hashlib.sha256(doc.key.encode("utf-8")).digest()


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Deterministic train/validation split by document.

    Documents are taken into validation in the order of the sha256 of their key until
    the validation bytes reach `val_fraction` of the total; both splits keep corpus order
    and both are non-empty.
    """
    sizes = [len(d.text.encode("utf-8")) for d in docs]
    total = sum(sizes)
    if len(docs) < 2:
        raise DataError(
            f"The corpus has {len(docs)} document(s) ({total:,} bytes), but a train and a validation "
            f"split need at least 2. Set a smaller data.document_bytes (for example "
            f"--set data.document_bytes=4096) so long files are cut into several documents, or give more text."
        )
    target = val_fraction * total
    order = sorted(range(len(docs)), key=lambda i: _order_key(docs[i]))
    val_ids: set[int] = set()
    val_bytes = 0
    for i in order[:-1]:  # the last one always stays in train
        val_ids.add(i)
        val_bytes += sizes[i]
        if val_bytes >= target:
            break
    train = [d for i, d in enumerate(docs) if i not in val_ids]
    val = [d for i, d in enumerate(docs) if i in val_ids]
    return train, val


def sample_order(docs: list[Document]) -> list[Document]:
    """Documents in the reproducible order the tokenizer sample is drawn in (sha256 of key)."""
    return sorted(docs, key=_order_key)


# -- which preset and which name a run on a source gets ------------------------------------

PYTHON_SHARE = 0.5
"""A folder whose text is at least this share Python source (by bytes) trains the python-stdlib recipe."""


def preset_for(source: str) -> tuple[str, str]:
    """The preset a run on `source` starts from when none is named, and one sentence saying why.

    A named source takes the preset built on it (tinyshakespeare: tiny-shakespeare). A
    file or folder that is mostly Python source takes python-stdlib (a code model on its
    .py files); any other file, folder, URL or dataset takes `text`, which reads prose and
    code alike.
    """
    from localtrain import config as cfg
    from localtrain.data.stream import VENDORED_DIRS

    name = source.strip()
    for preset in cfg.preset_names():
        own = str(cfg.load_preset(preset)[0].get("data", {}).get("source", "")).strip()
        if own and own.lower() == name.lower():
            return preset, f"No --preset given: {name} is the {preset} preset's own source, so the run takes it."
    path = Path(name).expanduser()
    text = cfg.load_preset("text")[0]["data"]
    if path.is_dir():
        vendored = [f"{d}/*" for d in VENDORED_DIRS] + list(VENDORED_DIRS)
        files = list_files(path, list(text.get("include", [])), list(text.get("exclude", [])) + vendored)
        total = sum(f.size for f in files)
        python = sum(f.size for f in files if f.relpath.endswith(".py"))
    else:
        total = python = 1 if name.endswith(".py") else 0
    if total and python / total >= PYTHON_SHARE:
        return "python-stdlib", (
            f"No --preset given: {name} is mostly Python source ({python / total:.0%} of its text), so the run "
            f"takes the python-stdlib preset (a code model on its .py files). Pass --preset text to read every "
            f"kind of text file in it."
        )
    return "text", (
        f"No --preset given: the run takes the text preset, which reads prose and code alike (plain text, "
        f"Markdown, reStructuredText, HTML without its tags, source files). Pass --preset NAME for another "
        f"(`localtrain config --presets` lists them)."
    )


def source_name(source: str) -> str:
    """A short name for a data source, fit for a directory name: `notes` for ~/notes or
    notes.md, `corpus` for https://example.org/corpus.txt, `wikitext-103-raw-v1` for
    hf:Salesforce/wikitext/wikitext-103-raw-v1; empty when nothing fits."""
    name = source.strip()
    if name.lower().startswith("hf:"):
        name = name[3:]
    elif "://" in name:
        name = urlparse(name).path
    parts = [p for p in name.replace("\\", "/").split("/") if p and p not in (".", "..", "~")]
    parts = [p for p in parts if not glob.has_magic(p)] or [""]
    last = parts[-1]
    for _ in range(2):  # notes.md -> notes, dump.xml.bz2 -> dump
        stem, dot, suffix = last.rpartition(".")
        if dot and stem and suffix.isalnum() and len(suffix) <= 5:
            last = stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-._")[:40]
