"""What `data.source` names, and the source that reads it.

A source is a named corpus (`corpora`; only `python-stdlib` lives on every machine), a
URL (`url`), an `hf:NAME` dataset (`hf`), or a path to a file, a directory or a glob
(`local`). `source_spec` says what a source is and what identifies its content *before*
anything is downloaded or read (the cache key is built from it); its `open()` then
downloads what must be downloaded and returns the `Source` to read.
"""

from __future__ import annotations

import glob
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from localtrain.config import DataConfig
from localtrain.data import corpora
from localtrain.data.hf import HFSource
from localtrain.data.local import VENDORED_EXCLUDE, list_files, open_local
from localtrain.data.stream import Source
from localtrain.data.url import download_path, fetch_url
from localtrain.errors import DataError, LocaltrainError
from localtrain.events import Emit


@dataclass
class SourceSpec:
    """A source before it is opened: what identifies it, and how to open it."""

    name: str
    fingerprint: dict[str, Any]
    open: Callable[[Emit], Source]


def resolve_source(data: DataConfig) -> tuple[Path, list[str], list[str]]:
    """The path of `data.source` on this machine, with the include and exclude globs to apply."""
    name = data.source.strip()
    if not name:
        raise DataError(
            "No data to train on: data.source is empty (the text preset trains on text you give it). Pass "
            "--data PATH: a text, Markdown, reStructuredText or HTML file, or a folder of them (code too)."
        )
    if name == "python-stdlib":
        return Path(sysconfig.get_paths()["stdlib"]), list(data.include), list(data.exclude)
    lowered = name.lower()
    remote = lowered in corpora.NAMED or lowered.startswith(("hf:", "http://", "https://"))
    if remote and not Path(name).expanduser().exists():
        # Fetched when the data is prepared: the path it will have in the cache's downloads.
        target = corpora.origin(lowered) or name
        if target.lower().startswith("hf:"):
            return Path(target[3:]), list(data.include), list(data.exclude)
        return download_path(data, target), list(data.include), list(data.exclude)
    path = Path(name).expanduser()
    if not path.exists() and glob.has_magic(name):
        root, pattern = _glob_root(name)
        if root.is_dir():
            return root, [pattern, *data.include], list(data.exclude)
    if not path.exists():
        raise DataError(
            f"The data source `{name}` is not a named source and the path `{path}` does not exist. "
            f"Check the path, or pass `--data PATH` to a text file or a directory of text files."
        )
    return path, list(data.include), list(data.exclude)


def _glob_root(pattern: str) -> tuple[Path, str]:
    parts = Path(pattern).expanduser().parts
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return Path(*parts[:i]) if i else Path("."), "/".join(parts[i:])
    return Path(pattern), ""


def source_spec(data: DataConfig) -> SourceSpec:
    """The spec of `data.source`; fails at once on a local path that does not exist."""
    name = data.source.strip()
    target = corpora.origin(name) or name
    if target.lower().startswith("hf:"):
        source = HFSource(target)
        return SourceSpec(name, source.fingerprint(), lambda emit: source)
    if target.lower().startswith(("http://", "https://")):

        def open_url(emit: Emit) -> Source:
            return open_local(fetch_url(data, target, emit), list(data.include), list(data.exclude),
                              data.document_bytes, data.val_fraction)

        return SourceSpec(name, {"kind": "url", "url": target}, open_url)
    if glob.has_magic(name) and not Path(name).expanduser().exists():
        root, _ = _glob_root(name)
        if not root.is_dir():
            raise DataError(f"The data source `{name}` is a glob whose folder `{root}` does not exist. Check the path.")
    # A named corpus, an hf: dataset and a URL were handled above: what is left is a path that exists.
    root, include, exclude = resolve_source(data)
    source = open_local(root, include, exclude, data.document_bytes, data.val_fraction)
    return SourceSpec(name, source.fingerprint(), lambda emit: source)


# -- which preset and which name a run on a source gets ------------------------------------

PYTHON_SHARE = 0.5
"""A folder whose text is at least this share Python source (by bytes) trains the python-stdlib recipe."""


def preset_for(source: str) -> tuple[str, str]:
    """The preset a run on `source` starts from when none is named, and one sentence saying why.

    A named source takes the preset built on it (tinyshakespeare: tiny-shakespeare). A
    file or folder that is mostly Python source takes python-stdlib (a code model on its
    .py files); any other file, folder, URL or dataset takes `text`, which reads prose and
    code alike.
    """
    from localtrain import config as cfg

    name = source.strip()
    for preset in cfg.preset_names():
        own = str(cfg.load_preset(preset)[0].get("data", {}).get("source", "")).strip()
        if own and own.lower() == name.lower():
            return preset, f"No --preset given: {name} is the {preset} preset's own source, so the run takes it."
    path = Path(name).expanduser()
    text = cfg.load_preset("text")[0]["data"]
    if path.is_dir():
        files = list_files(path, list(text.get("include", [])), list(text.get("exclude", [])) + VENDORED_EXCLUDE)
        total = sum(f.size for f in files)
        python = sum(f.size for f in files if f.relpath.endswith(".py"))
    else:
        total = python = 1 if name.endswith(".py") else 0
    if total and python / total >= PYTHON_SHARE:
        return "python-stdlib", (
            f"No --preset given: {name} is mostly Python source ({python / total:.0%} of its text), so the run "
            f"takes the python-stdlib preset (a code model on its .py files). Pass --preset text to read every "
            f"kind of text file in it."
        )
    return "text", (
        "No --preset given: the run takes the text preset, which reads prose and code alike (plain text, "
        "Markdown, reStructuredText, HTML without its tags, source files). Pass --preset NAME for another "
        "(`localtrain config --presets` lists them)."
    )


def source_name(source: str) -> str:
    """A short name for a data source, fit for a directory name: `notes` for ~/notes or
    notes.md, `corpus` for https://example.org/corpus.txt, `wikitext-103-raw-v1` for
    hf:Salesforce/wikitext/wikitext-103-raw-v1; empty when nothing fits."""
    name = source.strip()
    if name.lower().startswith("hf:"):
        name = name[3:]
    elif "://" in name:
        name = urlparse(name).path
    parts = [p for p in name.replace("\\", "/").split("/") if p and p not in (".", "..", "~")]
    parts = [p for p in parts if not glob.has_magic(p)] or [""]
    last = parts[-1]
    for _ in range(2):  # notes.md -> notes, dump.xml.bz2 -> dump
        stem, dot, suffix = last.rpartition(".")
        if dot and stem and suffix.isalnum() and len(suffix) <= 5:
            last = stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-._")[:40]


def source_bytes(data: DataConfig) -> tuple[int, int, str]:
    """(text bytes, download bytes, how known) of the configured data source."""
    known = corpora.known_bytes(data.source)
    if known is not None:
        return (*known, "estimate for the named source")
    try:
        root, include, exclude = resolve_source(data)
    except LocaltrainError:
        return 0, 0, "unknown until downloaded"
    return sum(f.size for f in list_files(root, include, exclude)), 0, "measured"
