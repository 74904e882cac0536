"""What localtrain does when a careless or unlucky user points it at the wrong place, or bytes go bad.

One test per case: each checks the clear error or the right behaviour, and that every
file the user had before is byte-identical after (`snapshot` hashes them all).
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, TINY, last_step, localtrain, sets, start_localtrain, wait_for
from localtrain import checkpoint, events as ev, files, hardware
from localtrain.cli import main
from localtrain.config import DataConfig
from localtrain.control import CONTROL_FILE, ControlFile, send
from localtrain.data.download import download
from localtrain.data.prepare import prepare
from localtrain.data.shards import read_manifest
from localtrain.tui.runs import EventTail

SHORT = TINY + ["train.sample_every=0", "run.threads=1"]


def snapshot(root: Path) -> dict[str, str]:
    """The sha256 of every file under `root` (hidden ones too), by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and not p.is_symlink()}


def user_folder(root: Path) -> Path:
    """A folder of the user's own that looks like localtrain's (the names it writes), and other files."""
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("my notes")
    (root / "tokenizer.model").write_bytes(b"my own tokenizer, not localtrain's")
    for name in (".tmp-thesis", ".old-photos", "best"):
        (root / name).mkdir()
        (root / name / "keep.txt").write_text(f"keep {name}")
    (root / "train-00000.bin").write_bytes(bytes(range(256)))
    (root / "val-00000.bin").write_bytes(bytes(range(255, -1, -1)))
    return root


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def tiny(corpus: Path, run_dir: Path | str, *extra: str) -> list[str]:
    return ["run", "--data", str(corpus), "--run-dir", str(run_dir), "--plain", *sets(SHORT), *extra]


def events_of(run_dir: Path) -> list[ev.Event]:
    return ev.read_events(run_dir / "events.jsonl")


def warnings(run_dir: Path, code: str) -> list[str]:
    return [e.message for e in events_of(run_dir) if isinstance(e, ev.Warning) and e.code == code]


# -- 1. a run into a folder localtrain did not create --------------------------------------------


def test_1_a_run_into_a_users_folder_is_refused_and_touches_nothing(in_tmp, code_corpus, capsys) -> None:
    home = user_folder(in_tmp / "home")
    before, corpus = snapshot(home), snapshot(code_corpus)
    code, err = run(tiny(code_corpus, home, "--max-steps", "2"), capsys)
    assert code == 2 and "localtrain did not create it" in err and ".localtrain" in err and "Nothing was written" in err
    code, err = run(["run", "--resume", "--run-dir", str(home)], capsys)
    assert code == 2 and "no run to resume" in err
    assert snapshot(home) == before and snapshot(code_corpus) == corpus


def test_1_the_dashboard_never_starts_a_run_in_a_users_folder(tmp_path) -> None:
    from localtrain.tui.launch import RunForm, run_dir_for

    runs = tmp_path / "runs"
    home = user_folder(runs / "thesis")
    before = snapshot(home)
    chosen = run_dir_for(runs, RunForm(name="thesis"), "python-stdlib", "20260101-120000")
    assert chosen == runs / "thesis-2" and snapshot(home) == before


def test_1_a_run_directory_from_before_markers_is_adopted_and_keeps_what_is_not_its_own(in_tmp, code_corpus,
                                                                                        capsys) -> None:
    assert run(tiny(code_corpus, "r", "--max-steps", "10"), capsys)[0] == 0
    (in_tmp / "r" / ".localtrain").unlink()  # as a localtrain without markers left it
    (in_tmp / "r" / ".tmp-mine").mkdir()
    (in_tmp / "r" / ".tmp-mine" / "draft.txt").write_text("mine")
    (in_tmp / "r" / "checkpoints" / ".old-notes").mkdir()
    kept = {p: p.read_bytes() for p in (in_tmp / "r" / "checkpoints").rglob("*") if p.is_file()}
    code, err = run(["run", "--resume", "--run-dir", "r", "--max-steps", "12", "--plain"], capsys)
    assert code == 0, err
    assert json.loads((in_tmp / "r" / ".localtrain").read_text())["kind"] == "run"
    assert (in_tmp / "r" / ".tmp-mine" / "draft.txt").read_text() == "mine"
    assert (in_tmp / "r" / "checkpoints" / ".old-notes").is_dir()
    assert all(p.read_bytes() == b for p, b in kept.items() if p.exists())


# -- 2. export --force into the run, a folder above it, or the user's folder -----------------------


def test_2_export_force_never_deletes_the_run_a_parent_or_a_users_folder(trained_run, tmp_path, cache_dir) -> None:
    home = user_folder(tmp_path / "home")
    before_home, before_run = snapshot(home), snapshot(trained_run.parent)
    for out, why in ((trained_run, "is, or holds,"), (trained_run.parent, "is, or holds,"),
                     (home, "localtrain did not create it"), (home / "notes.txt", "is a file")):
        done = localtrain(["export", str(trained_run), "--out", str(out), "--force"], tmp_path, cache_dir)
        assert done.returncode == 2 and why in done.stderr and "Nothing was written" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert snapshot(home) == before_home and snapshot(trained_run.parent) == before_run


# -- 3. prepare --out into a folder with files named like localtrain's --------------------------


def test_3_prepare_into_a_folder_with_shards_of_its_own_is_refused(in_tmp, code_corpus, capsys) -> None:
    home = user_folder(in_tmp / "home")
    before = snapshot(home)
    code, err = run(["prepare", "--data", str(code_corpus), "--out", str(home), *sets(SHORT)], capsys)
    assert code == 2 and "localtrain did not create it" in err and "Nothing was written" in err
    # Nor inside the data source, where the shards would become part of it.
    code, err = run(["prepare", "--data", str(code_corpus), "--out", str(code_corpus / "prepared"),
                     *sets(SHORT)], capsys)
    assert code == 2 and "overlap" in err and not (code_corpus / "prepared").exists()
    assert snapshot(home) == before


# -- 4. a hostile control line; the same line in events.jsonl ------------------------------------


def test_4_a_100k_deep_line_in_control_and_events_is_skipped_and_the_run_goes_on(tmp_path, code_corpus,
                                                                                 cache_dir) -> None:
    run_dir = tmp_path / "r"
    corpus = snapshot(code_corpus)
    proc = start_localtrain(tiny(code_corpus, "r", "--max-steps", "100000"), tmp_path, cache_dir)
    try:
        wait_for(lambda: last_step(run_dir) >= 2, proc=proc)
        deep = b"[" * 100_000 + b"\n"
        for name in (CONTROL_FILE, "events.jsonl"):
            files.append(run_dir / name, deep)
        send(run_dir, "stop")
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    found = events_of(run_dir)
    assert isinstance(found[-1], ev.Done) and found[-1].reason == "interrupted"
    assert any("control.jsonl line 1 is not a command" in m for m in warnings(run_dir, "control_line"))
    tail = EventTail(run_dir / "events.jsonl")
    while tail.read().more:
        pass
    assert tail.bad_lines == 1  # the dashboard counts it and reads on
    assert snapshot(code_corpus) == corpus


def test_4_read_events_skips_valid_json_that_is_not_an_object(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    lines = ["[1, 2]", '"text"', "3", "null", '{"type": "error"}', ev.Error(message="kept").to_json()]
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    assert [e.message for e in ev.read_events(path)] == ["kept"]
    assert path.read_bytes() == before


# -- 5. an unterminated 50 MB control line ----------------------------------------------------------


def test_5_an_unterminated_50mb_control_line_is_read_once_and_dropped(tmp_path) -> None:
    heard: list[str] = []
    control = ControlFile(tmp_path, heard.append)
    with open(tmp_path / CONTROL_FILE, "ab") as f:
        f.write(b'{"command": "' + b"x" * 50_000_000)
    written = hashlib.sha256((tmp_path / CONTROL_FILE).read_bytes()).hexdigest()
    assert control() == []
    read_once = control.tail.bytes_read
    assert read_once >= 50_000_000 and control.tail.pending == b""  # dropped as it streamed past
    for _ in range(5):
        assert control() == []
    assert control.tail.bytes_read == read_once  # between steps, nothing is read again
    send(tmp_path, "pause")
    assert control() == ["pause"] and control.tail.bad_lines == 1
    assert len(heard) == 1 and "50,000,013 bytes" in heard[0]
    with open(tmp_path / CONTROL_FILE, "rb") as f:
        assert hashlib.sha256(f.read(50_000_013)).hexdigest() == written  # only appended to


# -- 6. appending after a cut-off last line ---------------------------------------------------------


def test_6_an_event_after_a_cut_off_line_starts_a_line_of_its_own(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    written = ev.Warning(message="one").to_json() + "\n" + '{"type": "step", "st'
    path.write_text(written)
    writer = ev.EventWriter(path)
    writer(ev.Warning(message="two"))
    writer.close()
    assert path.read_text().startswith(written)  # nothing already written changes
    assert [e.message for e in ev.read_events(path)] == ["one", "two"]
    control = tmp_path / CONTROL_FILE
    reader = ControlFile(tmp_path)  # a run started before the file existed reads it from the start
    control.write_text('{"command": "pa')  # a controller that died mid-line
    send(tmp_path, "sample")
    assert reader() == ["sample"] and reader.tail.bad_lines == 1
    assert control.read_text().startswith('{"command": "pa\n')


# -- 7. the prepared-data cache is verified when it is opened -----------------------------------


def prepared(corpus: Path, cache: Path, emit=lambda e: None):
    data = DataConfig(source=str(corpus), tokenizer="char", character_coverage=1.0, document_bytes=4096,
                      shard_tokens=65536, cache_dir=str(cache))
    return prepare(data, emit, threads=1)


@pytest.mark.parametrize("damage", ["flipped_shard_byte", "cut_manifest", "edited_manifest_value",
                                    "another_tokenizer", "legacy_id_out_of_range"])
def test_7_a_damaged_cache_is_moved_aside_named_and_rebuilt(tmp_path, code_corpus, damage) -> None:
    corpus = snapshot(code_corpus)
    first = prepared(code_corpus, tmp_path / "cache")
    directory = first.dir
    good = {n: (directory / n).read_bytes() for n in ("train-00000.bin", "train-00001.bin", "val-00000.bin",
                                                      "tokenizer.model")}
    manifest = read_manifest(directory)
    if damage == "flipped_shard_byte":
        raw = bytearray(good["train-00001.bin"])
        raw[1001] ^= 0x01
        (directory / "train-00001.bin").write_bytes(bytes(raw))
    elif damage == "cut_manifest":
        text = (directory / "manifest.json").read_bytes()
        (directory / "manifest.json").write_bytes(text[: len(text) // 2])
    elif damage == "edited_manifest_value":  # valid JSON that every other check would accept
        text = (directory / "manifest.json").read_text()
        (directory / "manifest.json").write_text(text.replace(f'"vocab_size": {manifest["vocab_size"]},',
                                                              f'"vocab_size": {manifest["vocab_size"] + 1},', 1))
    elif damage == "another_tokenizer":
        other = prepared(code_corpus / "argparse.py", tmp_path / "other")
        shutil.copyfile(other.tokenizer_path, directory / "tokenizer.model")
    else:  # a cache from before shards were hashed, with an id no vocabulary holds
        for split in ("train", "val"):
            for shard in manifest["splits"][split]["shards"]:
                shard.pop("sha256")
        manifest.pop("manifest_sha256")
        (directory / "manifest.json").write_text(json.dumps(manifest))
        raw = np.fromfile(directory / "train-00000.bin", dtype="<u2")
        raw[7] = manifest["vocab_size"] + 5
        raw.tofile(directory / "train-00000.bin")
    damaged = snapshot(directory)
    found: list = []
    again = prepared(code_corpus, tmp_path / "cache", found.append)
    (warning,) = [e for e in found if isinstance(e, ev.Warning) and e.code == "damaged_data"]
    (aside,) = [p for p in directory.parent.iterdir() if p.name.startswith(directory.name + ".damaged-")]
    assert str(aside) in warning.message and str(directory) in warning.message
    assert snapshot(aside) == damaged  # moved, not deleted: every damaged byte kept for inspection
    assert again.dir == directory and all((directory / n).read_bytes() == b for n, b in good.items())
    assert snapshot(code_corpus) == corpus


def test_7_a_cache_from_before_hashes_keeps_working_and_gets_them(tmp_path, code_corpus) -> None:
    first = prepared(code_corpus, tmp_path / "cache")
    manifest = read_manifest(first.dir)
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["shards"]:
            shard.pop("sha256")
    manifest.pop("manifest_sha256")
    (first.dir / "manifest.json").write_text(json.dumps(manifest))
    (first.dir / ".localtrain").unlink()
    shards = {p.name: p.read_bytes() for p in first.dir.glob("*.bin")}
    found: list = []
    prepared(code_corpus, tmp_path / "cache", found.append)
    assert not [e for e in found if isinstance(e, ev.Warning)]
    upgraded = read_manifest(first.dir)
    assert all(s["sha256"] == hashlib.sha256(shards[s["file"]]).hexdigest()
               for split in ("train", "val") for s in upgraded["splits"][split]["shards"])
    assert {p.name: p.read_bytes() for p in first.dir.glob("*.bin")} == shards


# -- 8. a resumed download whose server file changed --------------------------------------------


class ChangingFile(http.server.BaseHTTPRequestHandler):
    """Serves version 1 of a file, drops the first connection mid-file, then serves version 2 (same size)."""

    versions = [bytes(range(256)) * 2048, bytes(range(255, -1, -1)) * 2048]
    served = 0
    headers_sent: set[str] = {"ETag", "Last-Modified"}
    honour_if_range = True
    ranges: list[str | None] = []
    conditions: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        cls = type(self)
        version = min(cls.served, 1)
        body = cls.versions[version]
        tags = {"ETag": f'"v{version}"', "Last-Modified": f"Mon, 0{version + 1} Jan 2024 00:00:00 GMT"}
        header, condition = self.headers.get("Range"), self.headers.get("If-Range")
        cls.ranges.append(header)
        cls.conditions.append(condition)
        if header and cls.honour_if_range and condition not in tags.values():
            header = None  # the validator names another version: the whole file
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        self.send_response(206 if header else 200)
        for name in cls.headers_sent:
            self.send_header(name, tags[name])
        self.send_header("Content-Length", str(len(body) - start))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        cls.served += 1
        if cls.served == 1:
            self.wfile.write(body[start : start + 200_000])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("validators,honour", [({"ETag", "Last-Modified"}, True), ({"Last-Modified"}, True),
                                               (set(), True), ({"ETag"}, False)])
def test_8_a_download_whose_file_changed_restarts_instead_of_splicing(tmp_path, validators, honour) -> None:
    ChangingFile.served, ChangingFile.ranges, ChangingFile.conditions = 0, [], []
    ChangingFile.headers_sent, ChangingFile.honour_if_range = validators, honour
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChangingFile)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    try:
        dest = download(f"http://127.0.0.1:{httpd.server_address[1]}/f.bin", tmp_path / "dl" / "f.bin",
                        lambda e: None, backoff=0.01)
    finally:
        httpd.shutdown()
        httpd.server_close()
    new = ChangingFile.versions[1]
    assert len(new) == len(ChangingFile.versions[0]) and dest.read_bytes() == new  # never old + new
    if not validators:
        assert ChangingFile.ranges == [None, None]  # nothing to check a part against: not resumed
    else:  # the resumed request names the version its part holds
        strong = '"v0"' if "ETag" in validators else "Mon, 01 Jan 2024 00:00:00 GMT"
        assert ChangingFile.ranges[1] == "bytes=200000-" and ChangingFile.conditions[1] == strong
    assert not (tmp_path / "dl" / "f.bin.part").exists() and snapshot(mine) == before


# -- 9. state.json hashed; config.toml edited before a resume ----------------------------------------


def test_9_an_edited_state_json_is_refused_and_an_edited_config_is_named(in_tmp, code_corpus, capsys) -> None:
    corpus = snapshot(code_corpus)
    assert run(tiny(code_corpus, "r", "--max-steps", "30"), capsys)[0] == 0
    newest = in_tmp / "r" / "checkpoints" / "step-00000030"
    weights = (newest / "model.safetensors").read_bytes()
    state = json.loads((newest / "state.json").read_text())
    state["cursor"][1] += 8  # a data cursor edited by hand
    (newest / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    code, err = run(["run", "--resume", "--run-dir", "r", "--plain"], capsys)
    assert code == 0, err
    (skipped,) = warnings(in_tmp / "r", "checkpoint_skipped")
    assert "state.json does not match" in skipped and "step-00000030" in skipped
    assert (newest / "model.safetensors").read_bytes() == weights  # resumed from 20: the same step 30
    conf = in_tmp / "r" / "config.toml"
    conf.write_text(conf.read_text().replace("lr = 0.003", "lr = 0.5"))
    code, err = run(["run", "--resume", "--run-dir", "r", "--plain"], capsys)
    assert code == 0, err
    (changed,) = [m for m in warnings(in_tmp / "r", "config_changed") if "train.lr" in m]
    assert "config.toml sets train.lr = 0.5" in changed and "trained with 0.003" in changed
    assert snapshot(code_corpus) == corpus


# -- 10. export and best/; --resume RUN/checkpoints/step-N --------------------------------------------


def test_10_export_refuses_an_incomplete_best_and_resume_from_step_n_starts_there(in_tmp, code_corpus,
                                                                                   capsys) -> None:
    corpus = snapshot(code_corpus)
    assert run(tiny(code_corpus, "r", "--max-steps", "20"), capsys)[0] == 0
    ckpts = in_tmp / "r" / "checkpoints"
    newest = snapshot(ckpts / "step-00000020")
    tensors = {k: v for k, v in newest.items() if k.endswith(".safetensors")}
    (in_tmp / "r" / "best" / "COMPLETE").unlink()
    code, err = run(["export", "r", "--out", "hf"], capsys)
    assert code == 2 and "best is incomplete" in err and "--checkpoint latest" in err and not (in_tmp / "hf").exists()
    shutil.rmtree(in_tmp / "r" / "best")
    code, err = run(["export", "r", "--out", "hf"], capsys)
    assert code == 0 and "has no best/" in err and "latest checkpoint is exported" in err

    code, err = run(["run", "--resume", str(ckpts / "step-00000010"), "--plain"], capsys)
    assert code == 0, err
    plan = [e for e in events_of(in_tmp / "r") if isinstance(e, ev.Plan)][-1]
    assert plan.resumed_from == 10
    (moved,) = warnings(in_tmp / "r", "checkpoints_set_aside")
    (aside,) = [p for p in ckpts.iterdir() if p.name.startswith("set-aside-after-step-10")]
    assert str(aside) in moved and snapshot(aside / "step-00000020") == newest  # kept, unchanged
    again = snapshot(ckpts / "step-00000020")
    assert {k: again[k] for k in tensors} == tensors  # trained again from 10: the same weights and moments
    assert snapshot(code_corpus) == corpus


# -- 11. OS failures -----------------------------------------------------------------------------------


def fail_at(monkeypatch, code: int, match) -> list[str]:
    """Make the write layer fail with `code` on the first operation `match(op, path)` accepts."""
    hits: list[str] = []
    real = files._do

    def do(op, path, fn, *args):
        if not hits and match(op, str(path)):
            hits.append(f"{op} {path}")
            raise OSError(code, errno.errorcode[code] if code != errno.ENOSPC else "No space left on device")
        return real(op, path, fn, *args)

    monkeypatch.setattr(files, "_do", do)
    return hits


def test_11_a_full_disk_mid_checkpoint_is_a_clear_error_and_loses_nothing(in_tmp, code_corpus, capsys,
                                                                           monkeypatch) -> None:
    corpus = snapshot(code_corpus)
    assert run(tiny(code_corpus, "straight", "--max-steps", "20"), capsys)[0] == 0
    real = files._do
    hits = fail_at(monkeypatch, errno.ENOSPC, lambda op, p: op == "write" and ".tmp-step-00000020" in p
                   and p.endswith("optimizer.safetensors"))
    code, err = run(tiny(code_corpus, "r", "--max-steps", "20"), capsys)
    assert hits and code == 2 and "Traceback" not in err
    assert "No space left while writing" in err and "optimizer.safetensors" in err and "free on that" in err
    last = events_of(in_tmp / "r")[-1]
    assert isinstance(last, ev.Error) and "No space left" in last.message
    kept = snapshot(in_tmp / "r" / "checkpoints")
    assert checkpoint.load(in_tmp / "r" / "checkpoints" / "step-00000010").state["step"] == 10
    assert not [p for p in (in_tmp / "r" / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(files, "_do", real)  # the disk has room again
    code, err = run(["run", "--resume", "--run-dir", "r", "--plain"], capsys)
    assert code == 0, err
    assert all(snapshot(in_tmp / "r" / "checkpoints").get(k) == v for k, v in kept.items())
    final = "checkpoints/step-00000020/model.safetensors"
    assert (in_tmp / "r" / final).read_bytes() == (in_tmp / "straight" / final).read_bytes()
    assert snapshot(code_corpus) == corpus


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only filesystem"), (errno.EACCES, "Permission denied"),
                                        (errno.EIO, "I/O error")])
def test_11_read_only_refused_and_failing_disks_are_clear_errors(in_tmp, code_corpus, capsys, monkeypatch, code,
                                                                 words) -> None:
    assert run(tiny(code_corpus, "r", "--max-steps", "10"), capsys)[0] == 0
    before = snapshot(in_tmp / "r")
    hits = fail_at(monkeypatch, code, lambda op, p: p.endswith(("config.toml", ".lock")))
    code_, err = run(["run", "--resume", "--run-dir", "r", "--max-steps", "12", "--plain"], capsys)
    assert hits and code_ == 2 and words in err and "Traceback" not in err and "r/.lock" in err
    after = snapshot(in_tmp / "r")
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_11_a_run_dir_that_is_a_file_or_under_one_is_named(in_tmp, code_corpus, capsys) -> None:
    (in_tmp / "afile").write_text("mine")
    code, err = run(tiny(code_corpus, "afile", "--max-steps", "2"), capsys)
    assert code == 2 and "is a file, not a directory" in err
    code, err = run(tiny(code_corpus, "afile/run", "--max-steps", "2"), capsys)
    assert code == 2 and "Traceback" not in err and f"{in_tmp / 'afile'} is a file" in err and "ENOTDIR" in err
    assert (in_tmp / "afile").read_text() == "mine"
    # A run whose checkpoints/ is a file: EEXIST, named, the file kept and the run's events say so.
    assert run(tiny(code_corpus, "r2", "--max-steps", "2"), capsys)[0] == 0
    shutil.rmtree(in_tmp / "r2" / "checkpoints")
    (in_tmp / "r2" / "checkpoints").write_text("mine too")
    code, err = run(["run", "--resume", "auto", "--run-dir", "r2", "--max-steps", "3", "--plain"], capsys)
    assert code == 2 and "EEXIST" in err and "checkpoints" in err
    assert (in_tmp / "r2" / "checkpoints").read_text() == "mine too"
    assert isinstance(events_of(in_tmp / "r2")[-1], ev.Error)


def test_11_the_resume_disk_check_counts_only_what_is_still_to_write(in_tmp, code_corpus, capsys,
                                                                      monkeypatch) -> None:
    assert run(tiny(code_corpus, "r", "--max-steps", "20", "--set", "train.keep_checkpoints=2"), capsys)[0] == 0
    plan = json.loads((in_tmp / "r" / "plan.json").read_text())
    total = plan["disk_needed"]["data"] + plan["disk_needed"]["checkpoints"]
    held = checkpoint.bytes_on_disk(in_tmp / "r")
    remaining = plan["disk_needed"]["checkpoints"] - held  # the data is prepared already
    assert 0 < remaining < total
    free = {"free": (remaining + total) // 2}

    def disk(paths):
        return {name: {**free, "total": 10 * total, "device": 1} for name in paths}

    monkeypatch.setattr(hardware, "disk_usage", disk)
    code, err = run(["run", "--resume", "--run-dir", "r", "--max-steps", "30", "--plain"], capsys)
    assert code == 0, err  # free space between what is left to write and the whole need: enough
    free["free"] = remaining // 2
    code, err = run(["run", "--resume", "--run-dir", "r", "--max-steps", "40", "--plain"], capsys)
    assert code == 2 and "Not enough disk" in err and (" KiB" in err or " MiB" in err)


# -- 12. bounds ------------------------------------------------------------------------------------------


def test_12_absurd_numbers_fail_at_once_with_the_key_and_the_bound(tmp_path, code_corpus, cache_dir) -> None:
    corpus = snapshot(code_corpus)
    for setting, bound in (("train.batch_size=1e12", "at most 1,048,576"),
                           ("train.max_steps=1e30", "at most 1,000,000,000,000"),
                           ("train.lr=inf", "finite")):
        done = localtrain(["run", "--data", str(code_corpus), "--run-dir", "r", "--set", setting], tmp_path,
                          cache_dir, timeout=120)
        key = setting.split("=")[0]
        assert done.returncode == 2 and f"`{key}`" in done.stderr and bound in done.stderr, done.stderr
    assert not (tmp_path / "r").exists() and snapshot(code_corpus) == corpus


# -- 13. formats by content -----------------------------------------------------------------------------


def test_13_a_dump_a_jsonl_and_compressed_text_are_read_by_content(tmp_path) -> None:
    dump = SHARED_DATA / "wikipedia" / "enwiki-table-markup.xml.bz2"
    if not dump.is_file():
        pytest.skip(f"needs ../shared/data beside the repository ({dump} is absent)")
    xml = bz2.decompress(dump.read_bytes())
    files_ = {"named.xml.bz2": dump.read_bytes(), "unnamed.bz2": dump.read_bytes(), "gzipped": gzip.compress(xml)}
    docs = [{"title": f"t{i}", "text": f"document {i} " * 40} for i in range(40)]
    files_["docs.jsonl"] = "".join(json.dumps(d) + "\n" for d in docs).encode()
    files_["docs.txt"] = files_["docs.jsonl"]
    files_["text.txt"] = "\n".join(d["text"] for d in docs).encode()
    files_["text.gz"] = gzip.compress(files_["text.txt"])
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files_.items():
        (src / name).write_bytes(data)
    before = snapshot(src)

    def prepared_from(name: str) -> tuple[str, int, int, dict[str, bytes]]:
        data = DataConfig(source=str(src / name), tokenizer="char", character_coverage=1.0, document_bytes=4096,
                          val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
        done = prepare(data, lambda e: None, threads=1)
        splits = done.meta["splits"]
        return (done.meta["sources"][0]["kind"], splits["train"]["documents"] + splits["val"]["documents"],
                done.train_bytes + done.val_bytes, {p.name: p.read_bytes() for p in done.dir.glob("*.bin")})

    wiki = prepared_from("named.xml.bz2")
    assert wiki[0] == "wiki-dump" and wiki[1] > 0
    # Page titles decide the split, so the same pages give the same shards under any name.
    assert prepared_from("unnamed.bz2") == wiki and prepared_from("gzipped") == wiki
    # File names are part of the split keys here: the same documents and bytes.
    assert prepared_from("docs.txt")[:3] == prepared_from("docs.jsonl")[:3] == ("files", 40, sum(
        len(d["text"].encode()) for d in docs))
    assert prepared_from("text.gz")[:3] == prepared_from("text.txt")[:3]
    assert snapshot(src) == before


def test_dead_temporaries_are_removed_only_inside_a_directory_marked_as_that_kind(tmp_path: Path) -> None:
    from localtrain import ownership

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = f".plan.json.tmp{int(gone.stdout)}"
    user = tmp_path / "mine"
    user.mkdir()
    (user / leftover).write_text("a user's file")
    with pytest.raises(ownership.NotOurs):
        ownership.remove_dead_temporaries(user, "run", ("plan.json",))
    assert (user / leftover).read_text() == "a user's file"
    run = tmp_path / "run"
    ownership.claim(run, "run", None, "--run-dir run", "")
    for name in (leftover, "notes.txt", f".notes.txt.tmp{int(gone.stdout)}"):
        (run / name).write_text("x")
    with pytest.raises(ownership.NotOurs):  # a run directory is not prepared data
        ownership.remove_dead_temporaries(run, "prepared", ("plan.json",))
    ownership.remove_dead_temporaries(run, "run", ("plan.json",))
    kept = [ownership.MARKER, "notes.txt", f".notes.txt.tmp{int(gone.stdout)}"]
    assert sorted(p.name for p in run.iterdir()) == sorted(kept)
