"""Downloads that survive a dropped connection and a killed process, with checksums.

A file is fetched into `NAME.part` beside its destination. Every attempt asks for the
bytes after those already there (an HTTP Range request), so a connection dropped
mid-file, or a process killed mid-download, costs only what was in flight. Failed
attempts are retried with exponential backoff. When a checksum is known (given, or
read from a Wikimedia `md5sums`/`sha1sums` list) the finished file is verified before
it is renamed into place; a file that does not match is moved aside as `NAME.bad` and
never used. Progress goes out as `Download` events with bytes, bytes/s and ETA.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from localtrain.errors import DataError
from localtrain.events import Download, Emit, Warning
from localtrain.files import fsync_dir

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


def _open(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)


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
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total: int | None = None
    attempt = 0
    last_error = ""
    while True:
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have >= total:
            break
        try:
            with _open(url, have, timeout) as response:
                status = getattr(response, "status", 200)
                if have and status != 206:
                    have = 0  # the server ignored the range: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                started, sent, got = time.monotonic(), time.monotonic(), 0
                with open(part, "ab" if have else "wb") as f:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        f.write(block)
                        got += len(block)
                        now = time.monotonic()
                        if now - sent >= EVENT_SECONDS:
                            sent = now
                            emit(_progress(url, have + got, total, got / max(now - started, 1e-9)))
                    f.flush()
                    os.fsync(f.fileno())
                done = have + got
                if total is not None and done < total:
                    raise ConnectionError(f"the connection closed after {done:,} of {total:,} bytes")
                emit(_progress(url, done, total or done, got / max(time.monotonic() - started, 1e-9), finished=True))
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
            os.replace(part, bad)
            raise ChecksumError(
                f"The download of {url} does not match its published {algorithm} checksum (expected {checksum}, "
                f"got {got_sum}); it was moved aside to {bad} and is not used. Run the command again to download "
                f"it afresh, or check the address."
            )
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def _progress(url: str, done: int, total: int | None, rate: float, finished: bool = False) -> Download:
    eta = (total - done) / rate if total and rate > 0 else None
    return Download(url=url, bytes=done, total=total, bytes_per_s=rate, eta_s=0.0 if finished else eta,
                    done=finished)
