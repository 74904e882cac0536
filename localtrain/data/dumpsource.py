"""MediaWiki dumps as a source: a whole dump read as one stream, or a multistream dump
read one bz2 stream at a time (see `dump` for the parsing and `wiki` for the cleaning)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localtrain.data import dump, wiki
from localtrain.data.stream import Doc, Result, Source, Task

PAGES_PER_TASK = 64


def clean_pages(pages: list[wiki.Page], nbytes: int, site: wiki.Site | None = None) -> Result:
    """Dump pages to article documents; other namespaces, redirects and disambiguations dropped.

    `site` holds the dump's namespace names (dump.read_site); None: the canonical ones and aliases.
    """
    site = site or wiki.DEFAULT_SITE
    docs: list[Doc] = []
    dropped: collections.Counter[str] = collections.Counter()
    for page in pages:
        reason = wiki.page_drop_reason(page)
        if reason:
            dropped[reason] += 1
            continue
        text = wiki.clean(page.text, site)
        if not text:
            dropped["empty"] += 1
            continue
        docs.append(Doc(page.title, page.title, text))
    return Result(docs, dict(dropped), nbytes, articles=len(docs))


def multistream_task(path: str, offset: int, length: int, site: wiki.Site | None = None) -> Result:
    """One bz2 stream of a multistream dump: decode, parse and clean its pages."""
    pages, problem = dump.stream_pages(path, offset, length)
    result = clean_pages(pages, length, site)
    if problem:
        result.problems.append(problem + "; its pages were skipped")
        result.dropped["corrupt_stream"] = 1
    return result


class DumpSource(Source):
    """A MediaWiki XML dump (plain, bz2 or gzip) read as one stream; the cursor counts pages."""

    kind = "wiki-dump"

    def __init__(self, path: Path, compression: str | None = "sniff") -> None:
        self.path, self.name = path, str(path)
        self.compression = compression
        """bz2, gzip, None, or "sniff": told by the file's first bytes."""
        self.report = dump.DumpReport()

    def fingerprint(self) -> dict[str, Any]:
        st = self.path.stat()
        return {"kind": self.kind, "source": str(self.path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}

    def tasks(self, cursor: dict[str, Any] | None) -> Iterator[Task]:
        skip = (cursor or {}).get("pages", 0)
        self.report = dump.DumpReport()
        pages = dump.iter_pages(self.path, self.report, skip_pages=skip, compression=self.compression)
        last = 0
        # The report stands just after the last page taken: the task's cursor.
        while batch := list(itertools.islice(pages, PAGES_PER_TASK)):
            nbytes, last = self.report.compressed_bytes - last, self.report.compressed_bytes
            yield clean_pages, (batch, nbytes, self.report.site), {
                "pages": self.report.pages, "compressed_offset": self.report.compressed_bytes}

    def problems(self) -> list[str]:
        return [f"The dump `{self.path}`: {self.report.problem}."] if self.report.problem else []


class MultistreamSource(Source):
    """A multistream dump with its index: one task per bz2 stream; the cursor is a stream offset."""

    kind = "wiki-multistream"

    def __init__(self, path: Path, index: Path) -> None:
        self.path, self.index, self.name = path, index, str(path)
        self.streams = dump.read_index(index, path.stat().st_size)
        # The first stream before the pages is the header: <siteinfo> and its namespaces.
        self.site = dump.read_site_at(path, self.streams[0][0]) if self.streams[0][0] else wiki.DEFAULT_SITE

    def fingerprint(self) -> dict[str, Any]:
        st, si = self.path.stat(), self.index.stat()
        return {"kind": self.kind, "source": str(self.path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
                "index": [str(self.index.resolve()), si.st_size, si.st_mtime_ns]}

    def tasks(self, cursor: dict[str, Any] | None) -> Iterator[Task]:
        start = (cursor or {}).get("offset", -1)
        for i, (offset, length) in enumerate(self.streams):
            if offset < start:
                continue
            after = self.streams[i + 1][0] if i + 1 < len(self.streams) else self.path.stat().st_size
            yield multistream_task, (str(self.path), offset, length, self.site), {"offset": after, "stream": i + 1}
