"""Downloads that survive a dropped connection and a killed process, with checksums.

A file is fetched into `NAME.part` beside its destination, and the server's validators
of those bytes (ETag, Last-Modified) into `NAME.part.json` before the first byte. Every
later attempt asks for the bytes after those already there (an HTTP Range request) only
if the file is still the same: `If-Range` carries the validator, so a server whose file
changed answers with the whole new file, which replaces the part instead of being
spliced onto it. Without a validator a download is never resumed; it starts again. A
connection dropped mid-file, or a process killed mid-download, so costs only what was in
flight. Failed attempts are retried with exponential backoff. When a checksum is known (given, or
read from a Wikimedia `md5sums`/`sha1sums` list) the finished file is verified before
it is renamed into place; a file that does not match is moved aside as `NAME.bad` and
never used. Progress goes out as `Download` events with bytes, bytes/s and ETA.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from localtrain import ownership
from localtrain.errors import DataError
from localtrain.events import Download, Emit, Warning
from localtrain.files import Appender, make_dir, remove_file, replace, write_atomic

CHUNK = 1 << 16
EVENT_SECONDS = 0.5
USER_AGENT = "localtrain (https://github.com/localtrain)"


class ChecksumError(DataError):
    """A downloaded file does not match its published checksum."""


def _digest_name(checksum: str) -> str:
    return {32: "md5", 40: "sha1", 64: "sha256"}.get(len(checksum), "")


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_checksum_list(text: str, filename: str) -> str | None:
    """The checksum of `filename` in a `HASH  NAME` list (md5sum/sha1sum output, as Wikimedia publishes)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            return parts[0].lower()
    return None


def _open(url: str, start: int, timeout: float, if_range: str | None = None):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        request.add_header("Range", f"bytes={start}-")
        if if_range:
            request.add_header("If-Range", if_range)
    return urllib.request.urlopen(request, timeout=timeout)


def validators(headers: Any) -> dict[str, str]:
    """The response's ETag and Last-Modified: what identifies the version of the file served."""
    out = {}
    for name, key in (("ETag", "etag"), ("Last-Modified", "last_modified")):
        value = headers.get(name)
        if value:
            out[key] = value
    return out


def if_range(known: dict[str, str]) -> str | None:
    """The If-Range value for `known` validators: a strong ETag, else Last-Modified (weak ETags may not be used)."""
    etag = known.get("etag", "")
    if etag and not etag.startswith("W/"):
        return etag
    return known.get("last_modified")


def _read_validators(path: Path, url: str) -> dict[str, str] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("url") != url or not isinstance(obj.get("validators"), dict):
        return None
    return {k: str(v) for k, v in obj["validators"].items()}


def _same_version(known: dict[str, str], got: dict[str, str]) -> bool:
    """Whether a 206 answer serves the version the part holds (a server that ignored If-Range does not)."""
    return all(got[k] == known[k] for k in ("etag", "last_modified") if k in known and k in got)


def _content_range_start(headers: Any) -> int | None:
    value = headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0]) if value.startswith("bytes ") else None
    except (IndexError, ValueError):
        return None


def fetch_text(url: str, timeout: float = 30.0) -> str:
    """A small text file (a checksum list), in one request."""
    with _open(url, 0, timeout) as response:
        return response.read().decode("utf-8", errors="replace")


def download(
    url: str,
    dest: Path,
    emit: Emit,
    checksum: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url` to `dest` (resuming a `.part` left by an earlier attempt); return `dest`.

    An existing `dest` is taken as done (it was verified before it was renamed into
    place). `checksum` is an md5, sha1 or sha256 hex digest to verify against.
    """
    if dest.is_file():
        return dest
    if not dest.parent.is_dir():
        make_dir(dest.parent)
        ownership.write_marker(dest.parent, "download", url=url)
    part = dest.with_name(dest.name + ".part")
    meta = dest.with_name(dest.name + ".part.json")
    known = _read_validators(meta, url)
    if part.exists() and part.stat().st_size and not (known and if_range(known)):
        emit(Warning(message=f"The partial download {part} has no ETag or Last-Modified to check that the server "
                     f"still has the same file, so it is not resumed: the download starts again.",
                     code="download_restart"))
        known = None
    total: int | None = None
    attempt = 0
    last_error = ""
    while True:
        have = part.stat().st_size if part.exists() and known else 0
        if total is not None and have >= total:
            break
        try:
            with _open(url, have, timeout, if_range(known) if known else None) as response:
                status = getattr(response, "status", 200)
                got = validators(response.headers)
                resumed = bool(have) and status == 206 and _content_range_start(response.headers) == have \
                    and _same_version(known or {}, got)
                if have and not resumed:
                    emit(Warning(message=f"The server's copy of {url} is not the one {part} was downloading from "
                                 f"(or it does not serve ranges): the download starts again from the beginning.",
                                 code="download_restart"))
                    known, have = None, 0
                    if status == 206:
                        continue  # a part of a file that may not be the one in the part: ask for all of it
                if not have:
                    # The validators describe the bytes about to be written: recorded before the first of them.
                    known = got
                    write_atomic(meta, json.dumps({"url": url, "validators": got}, indent=1) + "\n")
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                started, sent, count = time.monotonic(), time.monotonic(), 0
                with Appender(part, truncate=not have) as f:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        f.write(block)
                        count += len(block)
                        now = time.monotonic()
                        if now - sent >= EVENT_SECONDS:
                            sent = now
                            emit(_progress(url, have + count, total, count / max(now - started, 1e-9)))
                    f.sync()
                done = have + count
                if total is not None and done < total:
                    raise ConnectionError(f"the connection closed after {done:,} of {total:,} bytes")
                emit(_progress(url, done, total or done, count / max(time.monotonic() - started, 1e-9),
                               finished=True))
                total = done
                break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                total = have  # the range starts at the end: the file is complete
                break
            last_error = f"HTTP {exc.code} {exc.reason}"
            if exc.code in (401, 403, 404, 410):
                raise DataError(
                    f"Downloading {url} failed: {last_error}. Check the address, or download the file yourself "
                    f"and pass --data PATH."
                ) from exc
        except (OSError, ConnectionError, ValueError) as exc:
            last_error = str(getattr(exc, "reason", None) or exc)
        attempt += 1
        if attempt > retries:
            kept = part.stat().st_size if part.exists() else 0
            raise DataError(
                f"Downloading {url} failed {attempt} times (last: {last_error}). The {kept:,} bytes received "
                f"so far are kept in {part}; run the command again to continue from there, or download the file "
                f"yourself and pass --data PATH."
            )
        delay = backoff * 2 ** (attempt - 1)
        emit(Warning(message=f"Download of {url} interrupted ({last_error}); retry {attempt} of {retries} "
                     f"in {delay:.1f}s, continuing from byte {part.stat().st_size if part.exists() else 0:,}.",
                     code="download_retry"))
        time.sleep(delay)
    if checksum:
        algorithm = _digest_name(checksum)
        got_sum = file_digest(part, algorithm)
        if got_sum != checksum.lower():
            bad = dest.with_name(dest.name + ".bad")
            replace(part, bad)
            remove_file(meta)
            raise ChecksumError(
                f"The download of {url} does not match its published {algorithm} checksum (expected {checksum}, "
                f"got {got_sum}); it was moved aside to {bad} and is not used. Run the command again to download "
                f"it afresh, or check the address."
            )
    replace(part, dest)
    remove_file(meta)
    return dest


def _progress(url: str, done: int, total: int | None, rate: float, finished: bool = False) -> Download:
    eta = (total - done) / rate if total and rate > 0 else None
    return Download(url=url, bytes=done, total=total, bytes_per_s=rate, eta_s=0.0 if finished else eta,
                    done=finished)
