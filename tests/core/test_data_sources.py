"""Reading a data source: globs, skipped files, newlines, documents and the split."""

from __future__ import annotations

import dataclasses
import os
import sysconfig
from pathlib import Path

import pytest

from localtrain.config import DataConfig
from localtrain.data.local import FileSource, decode_text, list_files, matches, read_file_task
from localtrain.data.prepare import prepare
from localtrain.data.sources import resolve_source, source_spec
from localtrain.data.stream import Doc, run_tasks
from localtrain.data.text import cut_text, is_val
from localtrain.errors import DataError
from localtrain.events import Prepare, Warning


def config(source: Path | str, **kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), source=str(source), **kw)


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for rel in ("a.py", "notes.txt", "test/x.py", "test/deep/y.py", "lib/m.py", "lib/test/z.py",
                "lib/tests/w.py", ".git/hooks/h.py", "__pycache__/c.py", "lib/__pycache__/d.py"):
        write(root, rel, f"# {rel}\nvalue = 1\n")
    return root


def relpaths(data: DataConfig) -> list[str]:
    root, include, exclude = resolve_source(data)
    return [f.relpath for f in list_files(root, include, exclude)]


def test_globs_select_files_on_a_tree(tree: Path) -> None:
    assert relpaths(config(tree)) == ["a.py", "lib/m.py", "lib/test/z.py", "lib/tests/w.py", "notes.txt",
                                      "test/deep/y.py", "test/x.py"]
    assert relpaths(config(tree, include=["*.py"], exclude=["test/*", "*/test/*", "*/tests/*"])) == [
        "a.py", "lib/m.py"]
    assert relpaths(config(tree, include=["lib/*"], exclude=["*/tests/*"])) == ["lib/m.py", "lib/test/z.py"]
    assert relpaths(config(tree, include=["*.txt"])) == ["notes.txt"]
    # A pattern without `/` names a directory anywhere too.
    assert relpaths(config(tree, include=["*.py"], exclude=["test"])) == ["a.py", "lib/m.py", "lib/tests/w.py"]


def test_glob_semantics() -> None:
    assert matches("a/b/c.py", "*.py")
    assert matches("test/a/b.py", "test/*")
    assert not matches("lib/test/a.py", "test/*")
    assert matches("lib/test/a.py", "*/test/*")
    assert matches("lib/deep/test/a.py", "*/test/*")
    assert matches("idlelib/idle_test/x.py", "idlelib/idle_test/*")
    assert not matches("a/b/c.py", "b/*.py")


def test_symlink_loop_is_walked_once(tree: Path) -> None:
    try:
        os.symlink(tree, tree / "lib" / "loop", target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("this filesystem cannot make a symlink")
    assert relpaths(config(tree, include=["*.py"], exclude=["*/test*/*", "test/*"])) == ["a.py", "lib/m.py"]


def test_stdlib_is_a_named_source() -> None:
    path, include, exclude = resolve_source(dataclasses.replace(DataConfig(), include=["*.py"], exclude=["x/*"]))
    assert path == Path(sysconfig.get_paths()["stdlib"])
    assert (include, exclude) == (["*.py"], ["x/*"])


@pytest.mark.parametrize("name", ["tinyshakespeare", "enwiki", "https://example.com/data.txt"])
def test_named_and_url_sources_resolve_to_their_download_in_the_cache(name: str, tmp_path: Path) -> None:
    data = dataclasses.replace(config(name), cache_dir=str(tmp_path))
    path, _, _ = resolve_source(data)
    assert path.parent.parent == tmp_path / "downloads"
    assert path.name == {"tinyshakespeare": "input.txt", "enwiki": "enwiki-latest-pages-articles-multistream.xml.bz2",
                         "https://example.com/data.txt": "data.txt"}[name]


def read(source: FileSource) -> tuple[list[Doc], dict[str, int], list[str]]:
    """Every document of a source as the preparation reads it, with drops by reason and problems."""
    docs: list[Doc] = []
    dropped: dict[str, int] = {}
    problems: list[str] = []
    for result, _ in run_tasks(source.tasks(None), 1):
        docs += result.docs
        problems += result.problems
        for reason, n in result.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
    return docs, dropped, problems


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        source_spec(config(missing))
    assert str(missing) in str(err.value) and "--data PATH" in str(err.value)


def test_binary_and_nul_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "good.txt", "".join(f"line {i} of a good file\n" for i in range(400)))
    write(src, "latin1.txt", "caf\xe9\n".encode("latin-1"))
    write(src, "nul.txt", b"abc\x00def\n")
    docs, dropped, problems = read(FileSource(src, [], [], 1 << 20))
    assert {d.key.split("#")[0] for d in docs} == {"good.txt"}
    assert dropped == {"not_utf8": 2}
    assert [p.split("`")[1] for p in problems] == ["latin1.txt", "nul.txt"]
    events: list = []
    prepare(dataclasses.replace(config(src, tokenizer="char"), cache_dir=str(tmp_path / "cache")), events.append,
            threads=1)
    warnings = [e for e in events if isinstance(e, Warning) and e.code == "skipped_files"]
    assert len(warnings) == 1
    assert "2 file" in warnings[0].message and "latin1.txt" in warnings[0].message
    assert "nul.txt" in warnings[0].message
    read_event = [e for e in events if isinstance(e, Prepare) and e.stage == "read"]
    assert read_event[0].skipped == 2 and read_event[0].dropped == {"not_utf8": 2}


def test_newlines_are_normalised_and_bom_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "crlf.txt", b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    assert decode_text(path.read_bytes()) == "one\ntwo\nthree\n"
    result = read_file_task(str(path), "crlf.txt", 1 << 20, False)
    assert result.docs == [Doc("crlf.txt#0", "crlf.txt", "one\ntwo\nthree\n")]


def test_empty_corpus_names_path_and_counts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "empty.txt", "")
    write(src, "blank.txt", "  \n\n\t\n")
    write(src, "binary.txt", b"\x89PNG\x00\x00")
    write(src, "other.md", "text that is not included\n")
    with pytest.raises(DataError) as err:
        prepare(dataclasses.replace(config(src, include=["*.txt"]), cache_dir=str(tmp_path / "cache")),
                lambda e: None, threads=1)
    message = str(err.value)
    assert str(src) in message
    assert "3 unit(s) read" in message and "1 not_utf8" in message and "2 empty" in message
    assert "data.include" in message


def test_a_folder_where_no_file_matches_says_so(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "other.md", "text that is not included\n")
    source = FileSource(src, ["*.txt"], [], 1 << 20)
    assert source.files == []
    assert "other.md" in source.problems()[0] and "data.include" in source.problems()[0]


def test_single_file_source_ignores_globs(tmp_path: Path) -> None:
    path = write(tmp_path, "input.txt", "To be, or not to be.\n")
    source = FileSource(path, ["*.py"], ["*.txt"], 1 << 20)
    assert [f.relpath for f in source.files] == ["input.txt"]
    docs, _, _ = read(source)
    assert [d.key for d in docs] == ["input.txt#0"]


def test_long_files_are_cut_at_line_breaks(tmp_path: Path) -> None:
    text = "".join(f"line {i:04d} " + "x" * 80 + "\n" for i in range(100))
    path = write(tmp_path, "big.txt", text)
    docs = read_file_task(str(path), "big.txt", 1024, False).docs
    assert len(docs) > 5
    assert [d.key for d in docs] == [f"big.txt#{i}" for i in range(len(docs))]
    assert "".join(d.text for d in docs) == text
    assert all(len(d.text.encode()) <= 1024 and d.text.endswith("\n") for d in docs)
    assert all(len(d.text.encode()) > 1024 - 100 for d in docs[:-1])


def test_a_line_longer_than_a_document_is_cut_too() -> None:
    text = "é" * 5000
    pieces = cut_text(text, 1024)
    assert "".join(pieces) == text and all(len(p.encode()) <= 1024 for p in pieces)


def test_split_is_by_document_deterministic_and_order_free(tmp_path: Path) -> None:
    # A large corpus: the hash of each document's key decides its side, whatever the order it is read in.
    src = tmp_path / "src"
    for i in range(200):
        write(src, f"file{i:03d}.txt", "".join(f"document {i} line {j}\n" for j in range(60)))
    docs, _, _ = read(FileSource(src, [], [], 1 << 20))
    assert len(docs) == 200 and all(d.split is None for d in docs)
    val = {d.key for d in docs if is_val(d.key, 0.1)}
    assert val == {d.key for d in reversed(docs) if is_val(d.key, 0.1)}
    assert 0 < len(val) < len(docs)
    assert 0.05 <= len(val) / len(docs) <= 0.2


def test_a_small_corpus_of_two_documents_keeps_both_sides(tmp_path: Path) -> None:
    # Both keys hash into train at this fraction: the small-corpus split must still hold one out.
    assert not is_val("a.txt#0", 0.3) and not is_val("c.txt#0", 0.3)
    src = tmp_path / "src"
    write(src, "a.txt", "first document\n" * 40)
    write(src, "c.txt", "second document\n" * 40)
    docs, _, _ = read(FileSource(src, [], [], 1 << 20, val_fraction=0.3))
    # The preparation's rule: the source's own split when it decided one, else the hash of the key.
    sides = [d.split or ("val" if is_val(d.key, 0.3) else "train") for d in docs]
    assert len(docs) == 2 and sorted(sides) == ["train", "val"]


def test_empty_single_file(tmp_path: Path) -> None:
    path = write(tmp_path, "input.txt", "\n\n")
    with pytest.raises(DataError) as err:
        prepare(dataclasses.replace(config(path), cache_dir=str(tmp_path / "cache")), lambda e: None, threads=1)
    assert str(path) in str(err.value) and "1 empty" in str(err.value)
