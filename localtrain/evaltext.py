"""Which text `localtrain eval --data` scores: a file, or a named text found in a data folder.

A named text (wikitext-2-test, tinyshakespeare, ...) is never downloaded here: it is looked
for under $LOCALTRAIN_DATA and the cache's data/ folder. The text is read exactly as stored
and must be UTF-8, so that its bytes per token are defined.
"""

from __future__ import annotations

import os
from pathlib import Path

from localtrain.errors import DataError

# Named texts: where a local copy may sit, relative to a data folder (the first found wins).
NAMED_TEXTS: dict[str, tuple[str, ...]] = {
    "wikitext-2-test": ("wikitext-2/test.txt", "wikitext-2/wiki.test.tokens"),
    "wikitext-2-valid": ("wikitext-2/valid.txt", "wikitext-2/wiki.valid.tokens"),
    "wikitext-103-test": ("wikitext-103/wiki.test.tokens", "wikitext-103/test.txt"),
    "wikitext-103-valid": ("wikitext-103/wiki.valid.tokens", "wikitext-103/valid.txt"),
    "tinyshakespeare": ("tinyshakespeare/input.txt",),
}


def read_text(path: Path) -> str:
    """The file's text, exactly as stored; a clear error for what is not UTF-8 text."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"--data {path}: cannot read it ({exc.strerror or exc}). Check the path.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"--data {path}: byte {exc.start} (0x{raw[exc.start]:02x}) is not valid UTF-8, so the text and its"
            " bytes per token cannot be defined. Convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
            " and evaluate that."
        ) from None
    if not text:
        raise DataError(f"--data {path} is empty: there is no text to score. Give a file with some text in it.")
    return text


def data_folders() -> list[Path]:
    """Where named texts are looked for: $LOCALTRAIN_DATA, then the cache's data/ folder."""
    from localtrain.data.paths import prepared_root

    out = [Path(p).expanduser() for p in os.environ.get("LOCALTRAIN_DATA", "").split(os.pathsep) if p]
    return out + [prepared_root()]


def resolve_named(name: str) -> Path:
    folders = data_folders()
    for folder in folders:
        for rel in NAMED_TEXTS[name]:
            if (folder / rel).is_file():
                return folder / rel
    looked = ", ".join(str(f / NAMED_TEXTS[name][0]) for f in folders)
    raise DataError(
        f"--data {name}: no local copy of this named text was found (looked at {looked}). Put the file there,"
        " set LOCALTRAIN_DATA to the folder that holds it, or pass --data PATH."
    )


def text_path(spec: str) -> Path:
    """The file `--data spec` names: a path, or a named text's local copy (a path that exists wins)."""
    path = Path(spec).expanduser()
    if spec in NAMED_TEXTS and not path.exists():
        return resolve_named(spec)
    if path.is_dir():
        raise DataError(f"--data {spec} is a folder. Give one text file, a named text"
                        f" ({', '.join(NAMED_TEXTS)}) or split:val / split:train.")
    if not path.exists():
        raise DataError(f"--data {spec}: no such file, and not a named text ({', '.join(NAMED_TEXTS)}) nor"
                        " split:val / split:train. Check the path.")
    return path
