"""Downloads against a real HTTP server on 127.0.0.1 that drops connections and serves ranges."""

from __future__ import annotations

import hashlib
import http.server
import signal
import threading
import time
from pathlib import Path

import pytest

from localtrain.data.download import ChecksumError, download, parse_checksum_list
from localtrain.errors import DataError
from localtrain.events import Download, Warning
from conftest import localtrain, start_localtrain, wait_for

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
ETAG = '"v1"'


def ranged(handler: http.server.BaseHTTPRequestHandler) -> str | None:
    """The Range header to honour: none when If-Range names another version than ETAG (as real servers do)."""
    header = handler.headers.get("Range")
    condition = handler.headers.get("If-Range")
    return header if header and (condition is None or condition == ETAG) else None


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; the first responses stop after `drop_after` bytes."""

    drops_left = 2
    drop_after = 300_000
    ranges: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        cls = type(self)
        header = ranged(self)
        cls.ranges.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        body = PAYLOAD[start:]
        self.send_response(206 if header else 200)
        self.send_header("ETag", ETAG)
        self.send_header("Content-Length", str(len(body)))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if cls.drops_left > 0:
            cls.drops_left -= 1
            self.wfile.write(body[: cls.drop_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the connection drops mid-file
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    FlakyHandler.drops_left, FlakyHandler.ranges = 2, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/data/file.bin"
    httpd.shutdown()
    httpd.server_close()


def test_dropped_connections_resume_with_ranges_and_verify(server: str, tmp_path: Path) -> None:
    events: list = []
    dest = tmp_path / "file.bin"
    sha1 = hashlib.sha1(PAYLOAD).hexdigest()
    assert download(server, dest, events.append, checksum=sha1, backoff=0.01) == dest
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "file.bin.part").exists()
    assert FlakyHandler.ranges == [None, "bytes=300000-", "bytes=600000-"]
    assert len([e for e in events if isinstance(e, Warning) and e.code == "download_retry"]) == 2
    done = [e for e in events if isinstance(e, Download) and e.done]
    assert done and done[-1].bytes == len(PAYLOAD) and done[-1].bytes_per_s > 0


def test_a_checksum_mismatch_is_reported_and_the_file_not_used(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    wrong = hashlib.md5(b"something else").hexdigest()
    with pytest.raises(ChecksumError) as err:
        download(server, dest, lambda e: None, checksum=wrong, backoff=0.01)
    assert "md5" in str(err.value) and wrong in str(err.value) and server in str(err.value)
    assert not dest.exists() and (tmp_path / "file.bin.bad").read_bytes() == PAYLOAD


def test_too_many_failures_keep_the_partial_file(server: str, tmp_path: Path) -> None:
    FlakyHandler.drops_left = 10
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError) as err:
        download(server, dest, lambda e: None, retries=1, backoff=0.01)
    assert type(err.value) is DataError  # the user's error, not a checksum mismatch or a raw socket error
    assert "failed 2 times" in str(err.value) and "run the command again" in str(err.value)
    assert (tmp_path / "file.bin.part").stat().st_size == 600_000
    FlakyHandler.drops_left = 0
    download(server, dest, lambda e: None, backoff=0.01)  # a rerun continues from the partial file
    assert dest.read_bytes() == PAYLOAD and FlakyHandler.ranges[-1] == "bytes=600000-"


def test_wikimedia_checksum_lists() -> None:
    text = "abc123  enwiki-latest-pages-articles.xml.bz2\nfff000  enwiki-latest-pages-articles-multistream.xml.bz2\n"
    assert parse_checksum_list(text, "enwiki-latest-pages-articles-multistream.xml.bz2") == "fff000"
    assert parse_checksum_list(text, "other.xml.bz2") is None


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Serves `body` in small, slow pieces, with Range support."""

    body = b""
    ranges: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        cls = type(self)
        header = ranged(self)
        cls.ranges.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        self.send_response(206 if header else 200)
        self.send_header("ETag", ETAG)
        self.send_header("Content-Length", str(len(cls.body) - start))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(cls.body) - 1}/{len(cls.body)}")
        self.end_headers()
        try:
            for i in range(start, len(cls.body), 8192):
                self.wfile.write(cls.body[i : i + 8192])
                time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_prepare_from_a_url_killed_mid_download_resumes(tmp_path: Path, cache_dir: Path) -> None:
    lines = [f"{i:05d} the quick brown fox jumps over the lazy dog, line {i} of the corpus.\n" for i in range(12000)]
    SlowHandler.body, SlowHandler.ranges = "".join(lines).encode(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/corpus.txt"
    args = ["--set", "data.tokenizer=char", "--set", "data.document_bytes=8192", "--workers", "1"]
    try:
        proc = start_localtrain(["prepare", "--data", url, "--out", "from-url", *args], tmp_path, cache_dir)
        parts = lambda: list((cache_dir / "downloads").rglob("corpus.txt.part"))  # noqa: E731
        wait_for(lambda: parts() and parts()[0].stat().st_size > 100_000, timeout=60, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept = parts()[0].stat().st_size
        assert 0 < kept < len(SlowHandler.body)
        done = localtrain(["prepare", "--data", url, "--out", "from-url", *args], tmp_path, cache_dir)
        assert done.returncode == 0, done.stderr
        assert SlowHandler.ranges[-1] is not None and int(SlowHandler.ranges[-1].split("=")[1][:-1]) >= kept
    finally:
        httpd.shutdown()
        httpd.server_close()
    local = tmp_path / "copy" / "corpus.txt"
    local.parent.mkdir()
    local.write_bytes(SlowHandler.body)
    ref = localtrain(["prepare", "--data", str(local), "--out", "from-file", *args], tmp_path, cache_dir)
    assert ref.returncode == 0, ref.stderr
    shards = sorted(p.name for p in (tmp_path / "from-file").glob("*.bin"))
    assert shards == sorted(p.name for p in (tmp_path / "from-url").glob("*.bin")) and "train-00000.bin" in shards
    for name in shards:
        assert (tmp_path / "from-url" / name).read_bytes() == (tmp_path / "from-file" / name).read_bytes()
