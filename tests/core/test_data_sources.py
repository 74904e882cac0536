"""Reading a data source: globs, skipped files, newlines, documents and the split."""

from __future__ import annotations

import dataclasses
import os
import sysconfig
from pathlib import Path

import pytest

from localtrain.config import DataConfig
from localtrain.data.sources import (
    Document,
    cut_text,
    list_files,
    matches,
    read_corpus,
    resolve_source,
    split_documents,
)
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


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        read_corpus(config(missing), lambda e: None)
    assert str(missing) in str(err.value) and "--data PATH" in str(err.value)


def test_binary_and_nul_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    write(tmp_path, "good.txt", "hello\n")
    write(tmp_path, "latin1.txt", "caf\xe9\n".encode("latin-1"))
    write(tmp_path, "nul.txt", b"abc\x00def\n")
    events: list = []
    corpus = read_corpus(config(tmp_path), events.append)
    assert corpus.skipped == ["latin1.txt", "nul.txt"]
    assert corpus.files == 1 and [d.key for d in corpus.documents] == ["good.txt#0"]
    warnings = [e for e in events if isinstance(e, Warning)]
    assert len(warnings) == 1 and warnings[0].code == "skipped_files"
    assert "2 file" in warnings[0].message and "latin1.txt" in warnings[0].message
    read = [e for e in events if isinstance(e, Prepare)]
    assert read[-1].stage == "read" and read[-1].skipped == 2 and read[-1].documents == 1


def test_newlines_are_normalised_and_bom_dropped(tmp_path: Path) -> None:
    write(tmp_path, "crlf.txt", b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    corpus = read_corpus(config(tmp_path), lambda e: None)
    assert corpus.documents == [Document("crlf.txt#0", "one\ntwo\nthree\n")]
    assert corpus.bytes == len("one\ntwo\nthree\n")


def test_empty_corpus_names_path_and_counts(tmp_path: Path) -> None:
    write(tmp_path, "empty.txt", "")
    write(tmp_path, "blank.txt", "  \n\n\t\n")
    write(tmp_path, "binary.txt", b"\x89PNG\x00\x00")
    write(tmp_path, "other.md", "text that is not included\n")
    with pytest.raises(DataError) as err:
        read_corpus(config(tmp_path, include=["*.txt"]), lambda e: None)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "3 file(s) matched" in message and "1 of them were skipped" in message
    assert "data.include" in message


def test_single_file_source_ignores_globs(tmp_path: Path) -> None:
    path = write(tmp_path, "input.txt", "To be, or not to be.\n")
    corpus = read_corpus(config(path, include=["*.py"], exclude=["*.txt"]), lambda e: None)
    assert [d.key for d in corpus.documents] == ["input.txt#0"] and corpus.files == 1


def test_long_files_are_cut_at_line_breaks(tmp_path: Path) -> None:
    text = "".join(f"line {i:04d} " + "x" * 80 + "\n" for i in range(100))
    write(tmp_path, "big.txt", text)
    corpus = read_corpus(config(tmp_path, document_bytes=1024), lambda e: None)
    docs = corpus.documents
    assert len(docs) > 5
    assert [d.key for d in docs] == [f"big.txt#{i}" for i in range(len(docs))]
    assert "".join(d.text for d in docs) == text
    assert all(len(d.text.encode()) <= 1024 and d.text.endswith("\n") for d in docs)
    assert all(len(d.text.encode()) > 1024 - 100 for d in docs[:-1])


def test_a_line_longer_than_a_document_is_cut_too() -> None:
    text = "é" * 5000
    pieces = cut_text(text, 1024)
    assert "".join(pieces) == text and all(len(p.encode()) <= 1024 for p in pieces)


def docs_of(n: int) -> list[Document]:
    return [Document(f"file{i}.txt#0", f"document {i}\n" * (i % 7 + 1)) for i in range(n)]


def test_split_is_deterministic_nonempty_and_sized() -> None:
    docs = docs_of(200)
    train, val = split_documents(docs, 0.1)
    assert (train, val) == split_documents(docs, 0.1)
    assert {d.key for d in val} == {d.key for d in split_documents(docs[::-1], 0.1)[1]}
    assert train and val and len(train) + len(val) == len(docs)
    assert not {d.key for d in train} & {d.key for d in val}
    for part in (train, val):  # each keeps corpus order
        assert [docs.index(d) for d in part] == sorted(docs.index(d) for d in part)
    total = sum(len(d.text.encode()) for d in docs)
    val_bytes = sum(len(d.text.encode()) for d in val)
    biggest = max(len(d.text.encode()) for d in docs)
    assert 0.1 * total <= val_bytes < 0.1 * total + biggest


def test_split_of_two_documents_keeps_both_sides() -> None:
    train, val = split_documents(docs_of(2), 0.5)
    assert len(train) == 1 and len(val) == 1


def test_split_needs_two_documents() -> None:
    with pytest.raises(DataError) as err:
        split_documents(docs_of(1), 0.1)
    assert "1 document" in str(err.value) and "data.document_bytes" in str(err.value)


def test_empty_single_file(tmp_path: Path) -> None:
    path = write(tmp_path, "input.txt", "\n\n")
    with pytest.raises(DataError) as err:
        read_corpus(config(path), lambda e: None)
    assert str(path) in str(err.value) and "empty" in str(err.value)
