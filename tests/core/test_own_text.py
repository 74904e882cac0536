"""Training on your own text: `run --data PATH` with no preset, a single file, a folder of
Markdown, HTML, and data errors that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import FORCED, read_jsonl, sets
from localtrain import config as cfg
from localtrain.cli import main
from localtrain.data.prepare import prepared_dir
from localtrain.data.text import is_val
from localtrain.data.sources import preset_for, source_name
from localtrain.data.local import FileSource, read_file_task
from localtrain.data.text import MIN_DOCUMENTS, html_to_text, split_fairly

REPO = Path(__file__).resolve().parents[2]
# Real Markdown that every checkout has: this project's own documentation.
MARKDOWN = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "docs" / "metrics.md"]


def markdown_dir(root: Path) -> Path:
    notes = root / "notes"
    notes.mkdir()
    for path in MARKDOWN:
        (notes / path.name).write_bytes(path.read_bytes())
    return notes


def test_a_folder_of_markdown_trains_with_no_settings(in_tmp, capsys) -> None:
    # Bug caught: --data without --preset taking python-stdlib, which reads only *.py and finds nothing.
    notes = markdown_dir(in_tmp)
    code = main(["run", "--data", str(notes), "--max-steps", "2", "--plain", *sets(FORCED)])
    out, err = capsys.readouterr()
    assert code == 0, err
    (run_dir,) = (in_tmp / "runs").iterdir()
    assert run_dir.name.startswith("notes-")  # named after the data, not the preset
    config = cfg.read_toml(run_dir / "config.toml")
    assert config["run"]["preset"] == "text"
    assert "No --preset given" in out and "text preset" in out
    events = read_jsonl(run_dir / "events.jsonl")
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 2] and all(e["val_tokens"] > 0 for e in evals)
    read = next(e for e in events if e["type"] == "prepare" and e["stage"] == "read")
    assert read["files"] == len(MARKDOWN)


def test_a_single_markdown_file_is_cut_so_that_validation_gets_its_share(in_tmp, capsys) -> None:
    # One file of ~30 KB is two documents at the preset's 16 KiB, notes.md#0 and #1, neither of
    # whose keys hashes into validation: the split by hash holds out nothing, and the fallback
    # that moves the last document over holds out nearly half.
    lines, size = [], 0
    for line in "\n".join(p.read_text() for p in MARKDOWN).splitlines(keepends=True):
        if size + len(line.encode()) > 30_000:
            break
        lines.append(line)
        size += len(line.encode())
    assert not is_val("notes.md#0", 0.1) and not is_val("notes.md#1", 0.1) and size > 28_000
    (in_tmp / "notes.md").write_text("".join(lines))
    code = main(["run", "--data", "notes.md", "--max-steps", "2", "--plain", *sets(FORCED)])
    out, err = capsys.readouterr()
    assert code == 0, err
    (run_dir,) = (in_tmp / "runs").iterdir()
    assert run_dir.name.startswith("notes-")
    config = cfg.resolve(base=cfg.read_toml(run_dir / "config.toml"))
    manifest = json.loads((prepared_dir(config.data) / "manifest.json").read_text())
    splits = manifest["splits"]
    documents = splits["train"]["documents"] + splits["val"]["documents"]
    share = splits["val"]["bytes"] / (splits["train"]["bytes"] + splits["val"]["bytes"])
    assert documents >= MIN_DOCUMENTS * 0.8 and 0.05 <= share <= 0.2, (documents, share)
    # The console says how much went to validation.
    assert f"validation holds {splits['val']['documents']} of {documents} documents ({share:.1%}" in out
    evals = [e for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "eval"]
    assert evals and evals[-1]["step"] == 2


def test_split_fairly_spreads_validation_through_a_small_corpus(tmp_path) -> None:
    text = MARKDOWN[0].read_text()
    # One piece: the hash sends all of it to one split, so it is cut finer and spread.
    size, val = split_fairly([("notes.md", text)], 1 << 20, 0.1)
    assert size < len(text.encode()) // (MIN_DOCUMENTS // 2) and val is not None
    (tmp_path / "notes.md").write_text(text)
    source = FileSource(tmp_path / "notes.md", [], [], 1 << 20, 0.1)
    assert (source.document_bytes, source.val_pieces) == (size, val)
    result = read_file_task(str(tmp_path / "notes.md"), "notes.md", size, False, val_pieces=val["notes.md"])
    held = [d for d in result.docs if d.split == "val"]
    share = sum(len(d.text) for d in held) / sum(len(d.text) for d in result.docs)
    assert 0.07 <= share <= 0.13 and len(held) >= 3
    # Validation pieces are spread through the text, not bunched at one end.
    positions = [result.docs.index(d) / len(result.docs) for d in held]
    assert min(positions) < 0.35 and max(positions) > 0.65
    # Twelve files, none of whose keys hashes into validation, are enough to hold out a fair
    # share at their own cut: each stays one document, and the fifth (where half of it first fits
    # within a tenth of the text so far) goes to validation.
    twelve = [(f"m{i}.md", text) for i in range(12)]
    assert not any(is_val(f"{rel}#0", 0.1) for rel, _ in twelve)
    assert split_fairly(twelve, 1 << 20, 0.1) == (1 << 20, {"m4.md": (0,)})
    # Where the hash already holds out a fair share (6 of these 60 keys hash below 0.1), the
    # corpus keeps its cut and the split by hash.
    fair = [(f"f{i}.md", text) for i in range(60)]
    assert sum(is_val(f"{rel}#0", 0.1) for rel, _ in fair) == 6
    assert split_fairly(fair, 1 << 20, 0.1) == (1 << 20, None)


def test_a_data_error_leaves_no_run_directory(in_tmp, capsys) -> None:
    # Bug caught: a run directory marked failed left behind for an error found before training.
    binary = in_tmp / "blobs"
    binary.mkdir()
    (binary / "a.txt").write_bytes(b"\x00\x01\x02" * 100)
    code = main(["run", "--data", str(binary), "--plain"])
    _, err = capsys.readouterr()
    assert code == 2 and "no documents" in err
    assert not (in_tmp / "runs").exists()
    # Validation too short for one window, found when training would start: nothing left either,
    # and the message gives the exact settings to pass.
    (in_tmp / "runs").mkdir()
    (in_tmp / "runs" / "keep-me").mkdir()
    (in_tmp / "notes.md").write_bytes(MARKDOWN[0].read_bytes())
    code = main(["run", "--data", "notes.md", "--plain", "--set", "data.val_fraction=0.01", *sets(FORCED)])
    _, err = capsys.readouterr()
    assert code == 2 and "--set data.val_fraction=0.2" in err and "--set model.seq_len=" in err
    assert [p.name for p in (in_tmp / "runs").iterdir()] == ["keep-me"]
    # A directory the user made is theirs: it is neither written to nor removed.
    mine = in_tmp / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file\n")
    code = main(["run", "--data", str(binary), "--run-dir", str(mine), "--plain"])
    assert code == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "my own file\n"


def test_a_folder_the_default_preset_cannot_read_says_the_exact_setting(in_tmp, capsys) -> None:
    notes = markdown_dir(in_tmp)
    code = main(["run", "--preset", "python-stdlib", "--data", str(notes), "--plain"])
    _, err = capsys.readouterr()
    assert code == 2
    assert """--set 'data.include=["*.md"]'""" in err and "--preset text" in err
    assert not (in_tmp / "runs").exists()


def test_the_preset_and_the_name_come_from_the_data(tmp_path, code_corpus) -> None:
    notes = markdown_dir(tmp_path)
    assert preset_for(str(notes))[0] == "text"
    assert preset_for(str(notes / "README.md"))[0] == "text"
    assert preset_for(str(code_corpus))[0] == "python-stdlib"  # a folder of Python source
    assert preset_for(str(code_corpus / "argparse.py"))[0] == "python-stdlib"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.py").write_text("x = 1\n")
    (mixed / "guide.md").write_text("# A guide\n\n" + "Some prose about the project.\n" * 50)
    assert preset_for(str(mixed))[0] == "text"  # mostly prose by bytes
    assert preset_for("tinyshakespeare")[0] == "tiny-shakespeare"
    assert preset_for("https://example.org/corpus.txt")[0] == "text"
    assert source_name(str(notes)) == "notes"
    assert source_name("~/notes/") == "notes"
    assert source_name("/home/me/notes.md") == "notes"
    assert source_name("https://example.org/data/corpus.txt") == "corpus"
    assert source_name("hf:Salesforce/wikitext/wikitext-103-raw-v1") == "wikitext-103-raw-v1"
    assert source_name("~/notes/*.md") == "notes"
    assert source_name("dumps/enwiki-latest-pages-articles.xml.bz2") == "enwiki-latest-pages-articles"
    assert source_name("my notes (2026)") == "my-notes-2026"


def test_html_is_read_without_its_tags() -> None:
    page = """<!DOCTYPE html><html><head><title>Garden notes</title>
    <style>body { color: red; }</style><script>var x = "<p>not text</p>";</script></head>
    <body><h1>Tomatoes &amp; beans</h1>
    <p>Sow the beans
       in May.</p><ul><li>water daily</li><li>stake the tomatoes</li></ul>
    <pre>def water(row):
    return row * 2</pre><!-- a comment --><p>Done<br>for today.</p></body></html>"""
    # Paragraphs and headings apart, list items and <br> on lines of their own, <pre> as written.
    assert html_to_text(page) == (
        "Garden notes\n\nTomatoes & beans\n\nSow the beans in May.\n\nwater daily\nstake the tomatoes\n\n"
        "def water(row):\n    return row * 2\n\nDone\nfor today.\n"
    )
