"""Reading a JSONL file another process appends to, without being crashed or slowed by one line.

`JsonlTail` is the one reader of events.jsonl (for `events.read_events`, the dashboard
and any later reader) and of control.jsonl (for the training loop). It reads bounded
chunks from a remembered offset, keeps a last line that has no newline yet for the next
read (in memory, never read again from disk), and decodes each complete line on its
own: a line that is not a JSON object, that the decoder rejects, that raises anything
at all (a 100,000-deep `[[[[` raises RecursionError), or that is longer than
`MAX_LINE_BYTES` (dropped as it streams past, unterminated or not) is counted as a bad
line and reading goes on with the next one. A file that shrank (replaced) is read again
from the top.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")

CHUNK_BYTES = 1 << 20
MAX_LINE_BYTES = 1 << 20
"""The longest line read: an event or a command is a few KB, a sample a few tens."""
EXCERPT = 80


@dataclass
class Batch(Generic[T]):
    """One read: the decoded items, the bad lines (line number, what it held), and whether more waits."""

    items: list[T] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)
    more: bool = False
    missing: bool = False


def decode_object(line: bytes) -> dict[str, Any]:
    """One line as a JSON object; any other JSON value is rejected."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
    return obj


class JsonlTail(Generic[T]):
    """Reads the lines appended to `path` after `offset`, a bounded chunk at a time.

    `decode(obj)` turns each JSON object into an item (None: skip the line quietly, e.g.
    an event type this version does not know); whatever it raises makes the line bad.
    """

    def __init__(
        self,
        path: Path,
        decode: Callable[[dict[str, Any]], T | None] = lambda obj: obj,  # type: ignore[assignment,return-value]
        offset: int = 0,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.path = Path(path)
        self.decode = decode
        self.offset = offset
        self.chunk_bytes = chunk_bytes
        self.line_no = 0
        self.pending = b""
        """The bytes of a last line that has no newline yet."""
        self.skipping = 0
        """Bytes dropped so far of an over-long line whose newline has not come yet."""
        self.bad_lines = 0
        self.bytes_read = 0

    def read(self) -> Batch[T]:
        """Read at most `chunk_bytes` new bytes and decode the complete lines among them."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # replaced by a shorter file: start again
                    self.offset, self.line_no, self.pending, self.skipping = 0, 0, b"", 0
                if size == self.offset:
                    return Batch()
                f.seek(self.offset)
                data = f.read(self.chunk_bytes)
        except (FileNotFoundError, NotADirectoryError):
            return Batch(missing=True)
        self.offset += len(data)
        self.bytes_read += len(data)
        batch: Batch[T] = Batch(more=self.offset < size)
        *pieces, rest = data.split(b"\n")
        for piece in pieces:
            self.line_no += 1
            if self.skipping:
                dropped, self.skipping = self.skipping + len(piece), 0
                self._bad(batch, f"a line of {dropped:,} bytes, longer than the {MAX_LINE_BYTES:,} read")
                continue
            line, self.pending = self.pending + piece, b""
            self._line(batch, line)
        if self.skipping:
            self.skipping += len(rest)
        elif len(self.pending) + len(rest) > MAX_LINE_BYTES:
            self.skipping, self.pending = len(self.pending) + len(rest), b""
        else:
            self.pending += rest
        return batch

    def read_all(self) -> Batch[T]:
        """Read until the end of the file as it is now."""
        total: Batch[T] = Batch()
        while True:
            batch = self.read()
            total.items += batch.items
            total.bad += batch.bad
            total.missing = batch.missing
            if not batch.more:
                return total

    def _line(self, batch: Batch[T], line: bytes) -> None:
        if not line.strip():
            return
        if len(line) > MAX_LINE_BYTES:
            self._bad(batch, f"a line of {len(line):,} bytes, longer than the {MAX_LINE_BYTES:,} read")
            return
        try:
            item = self.decode(decode_object(line))
        except Exception:  # noqa: BLE001 - whatever one line raises, the reader goes on
            self._bad(batch, line[:EXCERPT].decode("utf-8", "replace"))
            return
        if item is not None:
            batch.items.append(item)

    def _bad(self, batch: Batch[T], what: str) -> None:
        self.bad_lines += 1
        batch.bad.append((self.line_no, what))
