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

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from localtrain import ownership
from localtrain.errors import DataError
from localtrain.events import Download, Emit, Warning
from localtrain.files import Appender, file_digest, make_dir, remove_file, replace, write_atomic

CHUNK = 1 << 16
EVENT_SECONDS = 0.5
USER_AGENT = "localtrain (https://github.com/localtrain)"


class ChecksumError(DataError):
    """A downloaded file does not match its published checksum."""


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
    return {key: headers.get(name) for name, key in (("ETag", "etag"), ("Last-Modified", "last_modified"))
            if headers.get(name)}


def if_range(known: dict[str, str]) -> str | None:
    """The If-Range value for `known` validators: a strong ETag, else Last-Modified (weak ETags may not be used)."""
    etag = known.get("etag", "")
    return etag if etag and not etag.startswith("W/") else known.get("last_modified")


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
    transfer = _Transfer(url, dest, emit, timeout)
    attempt = 0
    while True:
        try:
            if transfer.attempt():
                break
            continue  # a range of another version of the file: ask for all of it at once
        except urllib.error.HTTPError as exc:
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
            raise DataError(
                f"Downloading {url} failed {attempt} times (last: {last_error}). The {transfer.received():,} bytes "
                f"received so far are kept in {transfer.part}; run the command again to continue from there, or "
                f"download the file yourself and pass --data PATH."
            )
        delay = backoff * 2 ** (attempt - 1)
        emit(Warning(message=f"Download of {url} interrupted ({last_error}); retry {attempt} of {retries} "
                     f"in {delay:.1f}s, continuing from byte {transfer.received():,}.", code="download_retry"))
        time.sleep(delay)
    transfer.finish(dest, checksum)
    return dest


class _Transfer:
    """One download across its attempts: the `.part` file, the validators it was written under, the size."""

    def __init__(self, url: str, dest: Path, emit: Emit, timeout: float) -> None:
        self.url, self.emit, self.timeout = url, emit, timeout
        self.part = dest.with_name(dest.name + ".part")
        self.meta = dest.with_name(dest.name + ".part.json")
        self.known = _read_validators(self.meta, url)
        self.total: int | None = None
        if self.received() and not (self.known and if_range(self.known)):
            emit(Warning(message=f"The partial download {self.part} has no ETag or Last-Modified to check that the "
                         f"server still has the same file, so it is not resumed: the download starts again.",
                         code="download_restart"))
            self.known = None

    def received(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def attempt(self) -> bool:
        """One request: True once the file is complete, False to ask again for all of it."""
        have = self.received() if self.known else 0
        if self.total is not None and have >= self.total:
            return True
        try:
            with _open(self.url, have, self.timeout, if_range(self.known) if self.known else None) as response:
                return self._receive(response, have)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                self.total = have  # the range starts at the end: the file is complete
                return True
            raise

    def _receive(self, response, have: int) -> bool:
        status = getattr(response, "status", 200)
        got = validators(response.headers)
        resumed = bool(have) and status == 206 and _content_range_start(response.headers) == have \
            and _same_version(self.known or {}, got)
        if have and not resumed:
            self.emit(Warning(message=f"The server's copy of {self.url} is not the one {self.part} was downloading "
                              f"from (or it does not serve ranges): the download starts again from the beginning.",
                              code="download_restart"))
            self.known, have = None, 0
            if status == 206:
                return False  # a part of a file that may not be the one in the part
        if not have:
            # The validators describe the bytes about to be written: recorded before the first of them.
            self.known = got
            write_atomic(self.meta, json.dumps({"url": self.url, "validators": got}, indent=1) + "\n")
        length = response.headers.get("Content-Length")
        self.total = have + int(length) if length is not None else None
        started = time.monotonic()
        count = self._append(response, have, started)
        done = have + count
        if self.total is not None and done < self.total:
            raise ConnectionError(f"the connection closed after {done:,} of {self.total:,} bytes")
        self.emit(_progress(self.url, done, self.total or done, count / max(time.monotonic() - started, 1e-9),
                            finished=True))
        self.total = done
        return True

    def _append(self, response, have: int, started: float) -> int:
        """Write the body after the `have` bytes kept (or from empty), with progress events; the bytes written."""
        sent, count = started, 0
        with Appender(self.part, truncate=not have) as f:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                count += len(block)
                now = time.monotonic()
                if now - sent >= EVENT_SECONDS:
                    sent = now
                    self.emit(_progress(self.url, have + count, self.total, count / max(now - started, 1e-9)))
            f.sync()
        return count

    def finish(self, dest: Path, checksum: str | None) -> None:
        """Verify the checksum (a mismatch is moved aside to .bad) and rename the part into place."""
        if checksum:
            algorithm = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(checksum), "")
            got_sum = file_digest(self.part, algorithm)
            if got_sum != checksum.lower():
                bad = dest.with_name(dest.name + ".bad")
                replace(self.part, bad)
                remove_file(self.meta)
                raise ChecksumError(
                    f"The download of {self.url} does not match its published {algorithm} checksum (expected "
                    f"{checksum}, got {got_sum}); it was moved aside to {bad} and is not used. Run the command "
                    f"again to download it afresh, or check the address."
                )
        replace(self.part, dest)
        remove_file(self.meta)


def _progress(url: str, done: int, total: int | None, rate: float, finished: bool = False) -> Download:
    eta = (total - done) / rate if total and rate > 0 else None
    return Download(url=url, bytes=done, total=total, bytes_per_s=rate, eta_s=0.0 if finished else eta,
                    done=finished)
