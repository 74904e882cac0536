"""From `data.source` to a document stream: local paths, URLs, named corpora, `hf:` datasets.

`source_spec` says what a source is and what identifies its content *before* anything
is downloaded or read (the cache key is built from it); `open()` then downloads what
must be downloaded and returns the `Source` to read.
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from localtrain.config import DataConfig
from localtrain.data import download as dl
from localtrain.data.paths import downloads_dir
from localtrain.data.sources import resolve_source
from localtrain.data.stream import Source, open_local
from localtrain.errors import DataError
from localtrain.events import Emit, Warning

WIKIMEDIA = "https://dumps.wikimedia.org"
NAMED: dict[str, str] = {
    "tinyshakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "wikitext-103": "hf:Salesforce/wikitext/wikitext-103-raw-v1",
    "enwiki": f"{WIKIMEDIA}/enwiki/latest/enwiki-latest-pages-articles-multistream.xml.bz2",
}


@dataclass
class SourceSpec:
    """A source before it is opened: what identifies it, and how to open it."""

    name: str
    fingerprint: dict[str, Any]
    open: Callable[[Emit], Source]


def download_path(data: DataConfig, url: str) -> Path:
    """Where a URL is downloaded to: the cache's downloads/ folder, one subfolder per URL."""
    name = Path(urlparse(url).path).name or "download"
    return downloads_dir(data) / hashlib.sha256(url.encode("utf-8")).hexdigest()[:12] / name


def checksum_list_urls(url: str) -> list[str]:
    """Where Wikimedia publishes the checksums of a dump file: `<wiki>-<date>-{sha1,md5}sums.txt` beside it."""
    parsed = urlparse(url)
    if "wikimedia.org" not in parsed.netloc:
        return []
    name = Path(parsed.path).name
    parts = name.split("-")
    if len(parts) < 3:
        return []
    base = url[: url.rfind("/") + 1]
    return [f"{base}{parts[0]}-{parts[1]}-{kind}sums.txt" for kind in ("sha1", "md5")]


def published_checksum(url: str, emit: Emit) -> str | None:
    name = Path(urlparse(url).path).name
    for sums in checksum_list_urls(url):
        try:
            found = dl.parse_checksum_list(dl.fetch_text(sums), name)
        except OSError:
            continue
        if found:
            return found
    if checksum_list_urls(url):
        emit(Warning(message=f"No published checksum was found for {url}; the download is not verified.",
                     code="no_checksum"))
    return None


def fetch_url(data: DataConfig, url: str, emit: Emit, checksum: str | None = None) -> Path:
    """Download `url` (and a multistream dump's index) into the cache; the local path."""
    dest = download_path(data, url)
    if not dest.is_file():
        checksum = checksum or published_checksum(url, emit)
        dl.download(url, dest, emit, checksum=checksum)
    if dest.name.endswith("-multistream.xml.bz2"):
        index_name = dest.name[: -len(".xml.bz2")] + "-index.txt.bz2"
        index_url = url[: url.rfind("/") + 1] + index_name
        index = dest.with_name(index_name)
        if not index.is_file():
            dl.download(index_url, index, emit, checksum=published_checksum(index_url, emit))
    return dest


def _glob_root(pattern: str) -> tuple[Path, str]:
    parts = Path(pattern).expanduser().parts
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return Path(*parts[:i]) if i else Path("."), "/".join(parts[i:])
    return Path(pattern), ""


def source_spec(data: DataConfig) -> SourceSpec:
    """The spec of `data.source`; fails at once on a local path that does not exist."""
    name = data.source.strip()
    target = NAMED.get(name.lower(), name)
    if target.lower().startswith("hf:"):
        from localtrain.data.hf import HFSource

        source = HFSource(target)
        return SourceSpec(name, source.fingerprint(), lambda emit: source)
    if target.lower().startswith(("http://", "https://")):
        url = target

        def open_url(emit: Emit) -> Source:
            path = fetch_url(data, url, emit)
            return open_local(path, list(data.include), list(data.exclude), data.document_bytes,
                              data.val_fraction)

        return SourceSpec(name, {"kind": "url", "url": url}, open_url)
    if glob.has_magic(name) and not Path(name).expanduser().exists():
        root, pattern = _glob_root(name)
        if not root.is_dir():
            raise DataError(f"The data source `{name}` is a glob whose folder `{root}` does not exist. Check the path.")
        source = open_local(root, [pattern] + list(data.include), list(data.exclude), data.document_bytes,
                            data.val_fraction)
        return SourceSpec(name, source.fingerprint(), lambda emit: source)
    root, include, exclude = resolve_source(data)
    if not root.exists():
        raise DataError(
            f"The data source `{name}` is not a named source ({', '.join(['python-stdlib', *NAMED])}), a URL, "
            f"an hf:NAME dataset, or an existing path. Check the path, or pass --data PATH."
        )
    source = open_local(root, include, exclude, data.document_bytes, data.val_fraction)
    return SourceSpec(name, source.fingerprint(), lambda emit: source)
