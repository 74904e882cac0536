"""MediaWiki XML dumps, read as a stream: `.xml`, `.xml.bz2` and the multistream variant.

A whole dump is parsed incrementally and every finished `<page>` is handed on and
freed, so memory stays bounded by one page however large the file. A dump that stops
mid-page (a cut-off download), a corrupt bz2 block or bytes that are not XML end the
reading: every complete page before that point is kept and `DumpReport.problem` says
what happened and where.

A multistream dump is a concatenation of independent bz2 streams of about 100 pages
each, listed by its index file (`offset:page_id:title` lines). Each stream is a unit of
work of its own: it can be read from its byte offset, decoded and parsed apart from the
others, on any core, and a position in the dump is a stream offset.

The header before the first page, `<siteinfo>`, names the wiki's namespaces in its own
language (`read_site`): the cleaner needs them to know `[[Dosya:...]]` or
`[[Thể loại:...]]` for a file or a category link.
"""

from __future__ import annotations

import bz2
import gzip
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from localtrain.data import formats
from localtrain.data.wiki import Page, Site
from localtrain.errors import DataError

READ_BYTES = 1 << 20
HEADER_LIMIT = 16 << 20  # a header longer than this is not a MediaWiki export's
_NS = re.compile(r"^\{[^}]*\}")


@dataclass
class DumpReport:
    """How a dump read went: pages seen, bytes consumed, and the problem that stopped it."""

    pages: int = 0
    compressed_bytes: int = 0
    problem: str | None = None
    site: Site | None = None
    """The namespaces the dump's header names, once it has been read."""


def _local(tag: str) -> str:
    return _NS.sub("", tag) if tag.startswith("{") else tag


def read_site(header: bytes) -> Site:
    """The namespaces a dump header's `<siteinfo>` names, with the canonical names and the table's aliases.

    A header without `<siteinfo>` (or with a broken one) gives the canonical names and aliases alone.
    """
    start, end = header.find(b"<siteinfo"), header.find(b"</siteinfo>")
    if start < 0 or end < start:
        return Site.from_namespaces()
    try:
        info = ET.fromstring(header[start : end + len(b"</siteinfo>")])
    except ET.ParseError:
        return Site.from_namespaces()
    local: dict[int, list[str]] = {}
    for elem in info.iter():
        if _local(elem.tag) == "namespace" and (elem.text or "").strip():
            try:
                local.setdefault(int(elem.get("key", "")), []).append(elem.text.strip())
            except ValueError:
                continue
    return Site.from_namespaces(local)


def read_site_at(path: Path | str, length: int) -> Site:
    """The namespaces named by the first `length` bytes of a multistream dump (its header stream)."""
    with open(path, "rb") as f:
        data = f.read(length)
    try:
        header = bz2.BZ2Decompressor().decompress(data)
    except (OSError, EOFError, ValueError):
        return Site.from_namespaces()
    return read_site(header)


def _page(elem: ET.Element) -> Page:
    title, ns, pid, redirect, text = "", None, 0, False, ""
    for child in elem:
        tag = _local(child.tag)
        if tag == "title":
            title = child.text or ""
        elif tag == "ns":
            ns = int(child.text or 0)
        elif tag == "id":
            pid = int(child.text or 0)
        elif tag == "redirect":
            redirect = True
        elif tag == "revision":
            for sub in child:
                if _local(sub.tag) == "text":
                    text = sub.text or ""
    if ns is None:  # exports before schema 0.5 have no <ns>: a prefix in the title names it
        ns = 0 if ":" not in title else -1
    return Page(title, ns, pid, redirect, text)


def _pages_from_parser(parser: ET.XMLPullParser) -> Iterator[Page]:
    for event, elem in parser.read_events():
        if event == "end" and _local(elem.tag) == "page":
            yield _page(elem)
            elem.clear()


def _open_dump(path: Path, compression: str | None) -> tuple[BinaryIO, BinaryIO]:
    """The raw file and the decompressed stream over it ("sniff": the compression its first bytes show)."""
    raw = open(path, "rb")
    if compression == "sniff":
        compression = formats.compression_of(raw.read(4))
        raw.seek(0)
    stream: BinaryIO = (bz2.BZ2File(raw) if compression == "bz2"  # type: ignore[assignment]
                        else gzip.GzipFile(fileobj=raw) if compression == "gzip" else raw)
    return raw, stream


def _read_header(header: bytes, ended: bool, report: DumpReport) -> bytes:
    """Collect the dump's header until the first page starts, then read the site from it; what to keep."""
    # The header ends where the first page starts: it is read before any page is handed on.
    if b"<page" in header or ended or len(header) > HEADER_LIMIT:
        report.site = read_site(header[: header.find(b"<page")] if b"<page" in header else header)
        return b""
    return header


def iter_pages(path: Path, report: DumpReport, skip_pages: int = 0,
               compression: str | None = "sniff") -> Iterator[Page]:
    """Every complete page of a dump file, in order; the first `skip_pages` are parsed but not yielded.

    Parsing stops at the first problem (cut-off file, corrupt bz2 data, malformed XML) and
    records it in `report`; the pages before it have been yielded.
    """
    parser = ET.XMLPullParser(events=("end",))
    raw, stream = _open_dump(path, compression)
    header = b""
    try:
        while True:
            try:
                chunk = stream.read(READ_BYTES)
            except (OSError, EOFError, ValueError) as exc:
                report.problem = (f"the compressed data is corrupt after {raw.tell():,} bytes ({exc}); "
                                  f"the {report.pages} complete pages before that point were kept")
                break
            report.compressed_bytes = raw.tell()
            if report.site is None:
                header = _read_header(header + chunk, not chunk, report)
            error = None
            try:
                if chunk:
                    parser.feed(chunk)
                else:
                    parser.close()  # the end of the file: the pages it completes are handed on below
            except ET.ParseError as exc:
                error = exc
            if error is not None and not chunk:
                report.problem = (f"the file ends in the middle of a page after {report.pages} complete "
                                  f"pages (a cut-off download?); every complete page was kept")
                break
            # Pages finished before a parse error are still queued: they are kept.
            for page in _pages_from_parser(parser):
                report.pages += 1
                if report.pages > skip_pages:
                    yield page
            if error is not None:
                report.problem = (f"the XML is malformed ({error}); the {report.pages} complete pages before "
                                  f"that point were kept")
                break
            if not chunk:
                break
    finally:
        stream.close()
        raw.close()


# ---- multistream ------------------------------------------------------------------------


def find_index(path: Path) -> Path | None:
    """The index file beside a multistream dump: `...-multistream-index.txt[.bz2]`."""
    name = path.name
    for suffix in (".xml.bz2", ".xml"):
        if name.endswith(suffix) and "multistream" in name:
            stem = name[: -len(suffix)]
            for candidate in (f"{stem}-index.txt.bz2", f"{stem}-index.txt"):
                if (path.parent / candidate).is_file():
                    return path.parent / candidate
    return None


def read_index(index: Path, dump_size: int) -> list[tuple[int, int]]:
    """The (offset, length) of every bz2 stream that holds pages, in file order.

    The index lists one line per page; consecutive distinct offsets delimit the streams,
    and the last one runs to the closing stream of the file (the footer), found from the
    dump's size below.
    """
    offsets: list[int] = []
    try:
        opener = bz2.open if index.suffix == ".bz2" else open
        with opener(index, "rt", encoding="utf-8") as f:  # type: ignore[operator]
            for n, line in enumerate(f, 1):
                head = line.split(":", 1)[0]
                if not head.strip():
                    continue
                try:
                    offset = int(head)
                except ValueError:
                    raise DataError(
                        f"The multistream index `{index}` has a line {n} that does not start with a byte "
                        f"offset ({line.strip()[:80]!r}). Download the index that matches the dump again."
                    ) from None
                if not offsets or offset != offsets[-1]:
                    offsets.append(offset)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(
            f"The multistream index `{index}` could not be read ({exc}). Download it again, or remove it "
            f"to read the dump as one stream."
        ) from exc
    if not offsets:
        raise DataError(f"The multistream index `{index}` lists no pages. Download it again, or remove it.")
    if offsets != sorted(offsets) or offsets[-1] >= dump_size:
        raise DataError(
            f"The multistream index `{index}` lists offsets that do not fit the dump ({dump_size:,} bytes). "
            f"It belongs to another dump: download the index of the same date."
        )
    # The last page stream is followed by the small closing stream of the file; a
    # decompressor stops at the end of the first stream it reads, so the rest is harmless.
    ends = offsets[1:] + [dump_size]
    return [(a, b - a) for a, b in zip(offsets, ends)]


def stream_pages(path: str, offset: int, length: int) -> tuple[list[Page], str | None]:
    """The pages of one bz2 stream of a multistream dump, and a problem if it could not be read."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    try:
        xml = bz2.BZ2Decompressor().decompress(data)
    except (OSError, EOFError, ValueError) as exc:
        return [], f"the bz2 stream at byte offset {offset:,} is corrupt ({exc})"
    first, last = xml.find(b"<page>"), xml.rfind(b"</page>")
    if first < 0 or last < 0:
        return [], None
    parser = ET.XMLPullParser(events=("end",))
    try:
        parser.feed(b"<mediawiki>")
        parser.feed(xml[first : last + len(b"</page>")])
        parser.feed(b"</mediawiki>")
        pages = list(_pages_from_parser(parser))
        parser.close()
    except ET.ParseError as exc:
        return [], f"the bz2 stream at byte offset {offset:,} is not well-formed XML ({exc})"
    return pages, None
