"""A flipped bit in every file localtrain reads back: a clear error, or the same result as without it.

Never silent wrong data: a run resumed from a damaged run directory either stops with a
one-paragraph error, or continues to the same weights as an undamaged one, or says in a
warning what changed (a config.toml value). Prepared data is moved aside and rebuilt to
the same bytes; an export that does not match its hashes is refused. The positions come
from SEED (printed).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from fault_helpers import SEED, run_args, tree

from localtrain import events as ev
from localtrain.cli import main
from localtrain.config import DataConfig
from localtrain.data.download import download
from localtrain.data.prepare import Cancelled, prepare
from localtrain.errors import LocaltrainError
from localtrain.export import export, load_source


def flip(path: Path, rng: random.Random) -> str:
    raw = bytearray(path.read_bytes())
    if not raw:
        return "empty"
    i, bit = rng.randrange(len(raw)), rng.randrange(8)
    raw[i] ^= 1 << bit
    path.write_bytes(bytes(raw))
    return f"bit {bit} of byte {i}"


def test_flips_in_a_run_directory(tmp_path, monkeypatch, capsys, code_corpus) -> None:
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED)
    assert main(run_args(code_corpus, "r")) == 0
    shutil.copytree("r", "ref")
    resume = ["--resume", "--max-steps", "10"]
    assert main(run_args(code_corpus, "ref", *resume)) == 0
    final = "checkpoints/step-00000010"
    expected = tree(Path("ref") / final, skip=("state.json", "COMPLETE"))
    names = sorted(str(p.relative_to("r")) for p in Path("r").rglob("*") if p.is_file() and p.name != ".lock")
    assert {"config.toml", "checkpoints/step-00000008/state.json", "checkpoints/step-00000008/COMPLETE",
            "checkpoints/step-00000008/model.safetensors", "best/model.safetensors", ".localtrain"} <= set(names)
    outcomes = {}
    for name in names:
        shutil.rmtree("c", ignore_errors=True)
        shutil.copytree("r", "c")
        where = flip(Path("c") / name, rng)
        capsys.readouterr()
        code = main(run_args(code_corpus, "c", *resume))
        err = capsys.readouterr().err
        context = f"seed {SEED}: {where} of {name}: {err}"
        assert "Traceback" not in err, context
        if code != 0:
            assert code == 2 and err.startswith("error: "), context
            outcomes[name] = "error"
            continue
        same = tree(Path("c") / final, skip=("state.json", "COMPLETE")) == expected
        said = [e.message for e in ev.read_events(Path("c/events.jsonl"))[-60:]
                if isinstance(e, ev.Warning) and e.code in ("config_changed", "checkpoint_skipped")]
        assert same or any("config.toml" in m for m in said), context
        outcomes[name] = "same result" if same else "warned: " + said[0][:60]
    print(f"seed {SEED}: {outcomes}")


def data(corpus: Path) -> DataConfig:
    return DataConfig(source=str(corpus), tokenizer="char", character_coverage=1.0, document_bytes=4096,
                      shard_tokens=65536)


class After:
    """Asks a preparation to stop after `n` units of work (so it is left incomplete, seen.bin in use)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_flips_in_prepared_data_complete_or_not(tmp_path, monkeypatch, code_corpus) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("localtrain.data.prepare.COMMIT_BYTES", 64_000)
    rng = random.Random(SEED + 1)
    prepare(data(code_corpus), lambda e: None, threads=1, out_dir="ref")
    skip = (".lock", ".localtrain", "manifest.json")
    expected = tree(Path("ref"), skip=skip)
    with pytest.raises(Cancelled):
        # Stopped 5 files into the second pass (the first reads every file for the tokenizer sample).
        stop = After(len(list(code_corpus.iterdir())) + 5)
        prepare(data(code_corpus), lambda e: None, threads=1, out_dir="half", cancel=stop)
    outcomes = {}
    for source in ("ref", "half"):
        for name in sorted(p.name for p in Path(source).iterdir() if p.is_file()):
            shutil.rmtree("c", ignore_errors=True)
            shutil.copytree(source, "c")
            where = flip(Path("c") / name, rng)
            found: list = []
            context = f"seed {SEED}: {where} of {source}/{name}"
            try:
                prepare(data(code_corpus), found.append, threads=1, out_dir="c")
            except LocaltrainError as exc:
                outcomes[f"{source}/{name}"] = f"error: {str(exc)[:60]}"
                continue
            assert tree(Path("c"), skip=skip) == expected, context
            damaged = [e for e in found if isinstance(e, ev.Warning) and e.code == "damaged_data"]
            outcomes[f"{source}/{name}"] = "moved aside and rebuilt" if damaged else "same bytes"
            for aside in Path(".").glob("c.damaged-*"):
                shutil.rmtree(aside)
    print(f"seed {SEED}: {outcomes}")
    assert "moved aside and rebuilt" in outcomes["ref/train-00000.bin"]
    assert "moved aside and rebuilt" in outcomes["half/seen.bin"]


def test_flips_in_an_export(trained_run, tmp_path) -> None:
    rng = random.Random(SEED + 2)
    best = load_source(trained_run, "best")
    out = export(best, tmp_path / "e")
    outcomes = {}
    for name in sorted(p.name for p in out.iterdir()):
        shutil.rmtree(tmp_path / "c", ignore_errors=True)
        shutil.copytree(out, tmp_path / "c")
        where = flip(tmp_path / "c" / name, rng)
        try:
            again = load_source(tmp_path / "c")
        except LocaltrainError as exc:
            outcomes[name] = f"error: {str(exc)[:60]}"
            continue
        context = f"seed {SEED}: {where} of {name}"
        assert all((again.weights[k] == v).all() for k, v in load_source(out).weights.items()), context
        assert again.tokenizer_path.read_bytes() == (out / "tokenizer.model").read_bytes(), context
        outcomes[name] = "same"
    print(f"seed {SEED}: {outcomes}")
    assert outcomes["model.safetensors"].startswith("error") and outcomes["config.json"].startswith("error")


def test_a_flip_in_a_partial_download_restarts_it_or_fails_its_checksum(tmp_path) -> None:
    import hashlib
    import http.server
    import threading

    payload = bytes(range(256)) * 1024

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook
            header = self.headers.get("Range")
            start = int(header.split("=")[1].split("-")[0]) if header else 0
            self.send_response(206 if header else 200)
            self.send_header("ETag", '"one"')
            self.send_header("Content-Length", str(len(payload) - start))
            if header:
                self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
            self.end_headers()
            self.wfile.write(payload[start:])

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/f.bin"
    rng = random.Random(SEED + 3)
    try:
        for name in ("f.bin.part.json", "f.bin.part"):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "f.bin.part").write_bytes(payload[:100_000])
            (folder / "f.bin.part.json").write_text(f'{{"url": "{url}", "validators": {{"etag": "\\"one\\""}}}}')
            flip(folder / name, rng)
            try:
                got = download(url, folder / "f.bin", lambda e: None,
                               checksum=hashlib.sha256(payload).hexdigest(), backoff=0.01).read_bytes()
            except LocaltrainError as exc:
                assert "checksum" in str(exc) and not (folder / "f.bin").exists()
                continue
            assert got == payload
    finally:
        httpd.shutdown()
        httpd.server_close()
