"""URLs as a source: where a download goes in the cache, the checksum Wikimedia publishes
for a dump, and the fetch itself (with a multistream dump's index beside it)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

from localtrain.config import DataConfig
from localtrain.data import download as dl
from localtrain.data.paths import downloads_dir
from localtrain.events import Emit, Warning


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


def fetch_url(data: DataConfig, url: str, emit: Emit) -> Path:
    """Download `url` (and a multistream dump's index) into the cache; the local path."""
    dest = download_path(data, url)
    if not dest.is_file():
        dl.download(url, dest, emit, checksum=published_checksum(url, emit))
    if dest.name.endswith("-multistream.xml.bz2"):
        index_name = dest.name[: -len(".xml.bz2")] + "-index.txt.bz2"
        index_url = url[: url.rfind("/") + 1] + index_name
        index = dest.with_name(index_name)
        if not index.is_file():
            dl.download(index_url, index, emit, checksum=published_checksum(index_url, emit))
    return dest
