"""Text of any kind made ready to train on: HTML without its tags, and small corpora cut
finely enough to hold out a validation split.

Plain text, Markdown, reStructuredText and source code are read as they are; an HTML
file keeps what a reader sees (scripts, styles and markup go; paragraphs, headings,
list items and table rows become lines).
"""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
CODE_SUFFIXES = (
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".java", ".kt", ".scala", ".go", ".rs", ".js", ".mjs",
    ".ts", ".tsx", ".jsx", ".rb", ".php", ".swift", ".lua", ".pl", ".r", ".jl", ".hs", ".ml", ".ex", ".exs", ".erl",
    ".clj", ".sh", ".bash", ".zsh", ".sql",
)
"""Source code, whose "words" (whitespace-separated tokens) are not the words of prose."""
# Content no reader sees.
HIDDEN_TAGS = {"script", "style", "template", "noscript", "svg", "math"}
# Tags that end a line where they open or close, and those that end a paragraph (a blank line).
LINE_TAGS = {"br", "li", "tr", "dt", "dd", "option", "caption", "figcaption", "summary"}
BLOCK_TAGS = {
    "p", "div", "ul", "ol", "dl", "h1", "h2", "h3", "h4", "h5", "h6", "table", "section", "article", "header",
    "footer", "nav", "aside", "main", "pre", "blockquote", "hr", "figure", "title", "details", "form",
    "fieldset", "address",
}
LINE, PARAGRAPH = "\x00", "\x01"
MIN_DOCUMENTS = 40
"""A corpus that data.document_bytes would cut into fewer documents than this (one file of
notes) is checked for a fair split (`split_fairly`)."""
MIN_DOCUMENT_BYTES = 512
"""...but never into pieces smaller than this (a few lines of text)."""


class _Visible(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._tag(tag, +1)

    def handle_endtag(self, tag: str) -> None:
        self._tag(tag, -1)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self._break(tag)

    def _tag(self, tag: str, step: int) -> None:
        if tag in HIDDEN_TAGS:
            self.hidden = max(0, self.hidden + step)
        elif tag == "pre":
            self.pre = max(0, self.pre + step)
        self._break(tag)

    def _break(self, tag: str) -> None:
        if tag in LINE_TAGS:
            self.parts.append(LINE)
        elif tag in BLOCK_TAGS:
            self.parts.append(PARAGRAPH)

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        # Outside <pre>, a run of whitespace (line breaks of the source too) reads as one space.
        self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """The text a reader of `html` sees, one block (paragraph, heading, item, row) a line."""
    parser = _Visible()
    parser.feed(html)
    parser.close()
    # A run of breaks is one: a blank line if any of them ends a paragraph, else a line end.
    text = re.sub(f"[ \t]*[{LINE}{PARAGRAPH}][{LINE}{PARAGRAPH} \t]*",
                  lambda m: "\n\n" if PARAGRAPH in m.group() else "\n", "".join(parser.parts))
    return "\n".join(line.rstrip() for line in text.strip().split("\n")) + "\n"


def is_html(relpath: str) -> bool:
    return relpath.lower().endswith(HTML_SUFFIXES)


def is_code_file(path: str) -> bool:
    return path.lower().endswith(CODE_SUFFIXES)


def is_small(sizes: list[int], document_bytes: int) -> bool:
    """Whether files of these sizes make fewer than MIN_DOCUMENTS documents (one file of notes)."""
    return bool(sizes) and sum(max(1, -(-size // document_bytes)) for size in sizes) < MIN_DOCUMENTS


def _pieces(texts: list[tuple[str, str]], size: int) -> list[tuple[str, int, int]]:
    """(relpath, index, UTF-8 bytes) of each piece of the corpus cut at `size`, but blank ones
    (the preparation skips them too)."""
    return [(rel, i, len(piece.encode("utf-8"))) for rel, text in texts
            for i, piece in enumerate(cut_text(text, size)) if piece.strip()]


def hash_share(texts: list[tuple[str, str]], document_bytes: int, val_fraction: float) -> float:
    """The share of the text the split by key hash (`is_val`) holds out at this cut."""
    pieces = _pieces(texts, document_bytes)
    held = sum(n for rel, i, n in pieces if is_val(f"{rel}#{i}", val_fraction))
    return held / max(sum(n for _, _, n in pieces), 1)


def split_fairly(texts: list[tuple[str, str]], document_bytes: int,
                 val_fraction: float) -> tuple[int, dict[str, tuple[int, ...]] | None]:
    """How a small corpus of (relpath, text) is cut and split: the document size, and for each
    file the indices of its pieces that go to validation (None: the hash of the keys decides).

    The hash of a key decides the split of a large corpus; a corpus of a few dozen pieces
    leaves that to chance (a tenth of the pieces on average, none at worst). When the hash
    would hold out less than half or more than twice `val_fraction` of the text, validation
    pieces are spread evenly through the corpus instead (`_spread`), at its own cut when that
    comes within the same bounds, else cut into about MIN_DOCUMENTS pieces (one file of notes).
    """
    share = hash_share(texts, document_bytes, val_fraction)
    if val_fraction / 2 <= share <= 2 * val_fraction:
        return document_bytes, None
    val, share = _spread(texts, document_bytes, val_fraction)
    if val_fraction / 2 <= share <= 2 * val_fraction:
        return document_bytes, val
    total = sum(len(text.encode("utf-8")) for _, text in texts)
    size = max(MIN_DOCUMENT_BYTES, min(document_bytes, total // MIN_DOCUMENTS))
    return size, _spread(texts, size, val_fraction)[0]


def _spread(texts: list[tuple[str, str]], size: int,
            val_fraction: float) -> tuple[dict[str, tuple[int, ...]], float]:
    """Validation pieces spread through the corpus cut at `size`, and the share of the text they hold.

    A piece goes to validation when that keeps the validation bytes nearest `val_fraction` of the
    bytes so far; at least one piece does when there are two or more.
    """
    val: dict[str, list[int]] = {}
    seen = _pieces(texts, size)
    so_far = held = 0
    for rel, i, n in seen:
        so_far += n
        if held + n / 2 <= val_fraction * so_far:
            val.setdefault(rel, []).append(i)
            held += n
    if not val and len(seen) >= 2:
        rel, i, n = seen[len(seen) // 2]
        val[rel] = [i]
        held = n
    return {rel: tuple(ids) for rel, ids in val.items()}, held / max(so_far, 1)


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


def is_val(key: str, val_fraction: float) -> bool:
    """The split rule: the document's key hashes below val_fraction."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return h < val_fraction * 2**64
