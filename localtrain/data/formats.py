"""What a file holds, told by its first bytes rather than its name.

A file is bz2 or gzip when it starts with their magic bytes (`BZh` + a block size digit,
`1f 8b`), whatever its name. Its (decompressed) beginning then says what it is: a
MediaWiki XML dump starts with `<mediawiki` (after an optional XML declaration and
comments), JSONL is a first line that is a JSON object with a `text` string, and
anything else is text. When the beginning cannot tell (a first JSON line longer than
what is sniffed), the name decides: `.jsonl`, `.xml`, `.xml.bz2`.
"""

from __future__ import annotations

import bz2
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

SNIFF_BYTES = 1 << 16
_BZ2 = re.compile(rb"BZh[1-9]")
_GZIP = b"\x1f\x8b"
_OPENERS = {"bz2": bz2.open, "gzip": gzip.open}
_DECOMPRESSORS = {"bz2": bz2.decompress, "gzip": gzip.decompress}
_MEDIAWIKI = re.compile(rb"^\s*(<\?xml[^>]*\?>\s*)?(<!--.*?-->\s*)*<mediawiki[\s>]", re.S)


@dataclass(frozen=True)
class Format:
    compression: str | None
    """"bz2", "gzip" or None."""
    kind: str
    """"mediawiki", "jsonl" or "text"."""


def compression_of(head: bytes) -> str | None:
    if _BZ2.match(head[:4]):
        return "bz2"
    if head[:2] == _GZIP:
        return "gzip"
    return None


def decompress(raw: bytes) -> bytes:
    """`raw` decompressed when its magic bytes say bz2 or gzip, else as it is; raises OSError/EOFError if corrupt."""
    undo = _DECOMPRESSORS.get(compression_of(raw))
    return undo(raw) if undo else raw


def kind_of_text(head: bytes, name: str) -> str:
    """"mediawiki", "jsonl" or "text" for the (decompressed) first bytes of a file called `name`."""
    if _MEDIAWIKI.match(head[:4096].lstrip(b"\xef\xbb\xbf")):
        return "mediawiki"
    first = head.lstrip(b"\xef\xbb\xbf").lstrip().split(b"\n", 1)
    if first[0].startswith(b"{"):
        try:
            obj = json.loads(first[0])
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            return "jsonl"
        if obj is None and len(first) == 1 and name.endswith(".jsonl"):
            return "jsonl"  # a first line longer than the sniffed bytes: the name decides
    stem = name[: -len(".bz2")] if name.endswith(".bz2") else name[: -len(".gz")] if name.endswith(".gz") else name
    if stem.endswith((".jsonl", ".xml")) and not head.strip():
        return "jsonl" if stem.endswith(".jsonl") else "mediawiki"
    return "text"


def sniff(path: Path) -> Format:
    """The compression and the kind of content of a file, from its first bytes (and its name when they cannot tell)."""
    with open(path, "rb") as f:
        compression = compression_of(f.read(4))
    try:
        # Every stream of a multi-stream file is decompressed.
        with _OPENERS.get(compression, open)(path, "rb") as f:  # type: ignore[arg-type]
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError, ValueError):
        head = b""  # corrupt from the start: the readers report it
    return Format(compression, kind_of_text(head, path.name))
