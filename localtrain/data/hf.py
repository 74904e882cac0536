"""Hugging Face `datasets` as a document stream (`hf:NAME[/CONFIG]`, or local files through it).

Datasets are opened with `streaming=True`, so nothing is loaded whole. The cursor is
the number of rows consumed. Datasets whose rows are lines of articles (WikiText:
` = Title = ` starts an article) are regrouped into one document per article; every
other dataset gives one document per row, from its `text` column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localtrain.data.stream import Doc, Result, Source, Task
from localtrain.errors import DataError

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = \n?$")
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet", ".csv": "csv"}
ROWS_PER_TASK = 512


def parse_name(spec: str) -> tuple[str, str | None]:
    """`hf:owner/name/config` -> ("owner/name", "config"); `hf:name` -> ("name", None)."""
    body = spec[3:] if spec.lower().startswith("hf:") else spec
    if Path(body).expanduser().exists():
        return body, None
    parts = [p for p in body.split("/") if p]
    if not parts:
        raise DataError(f"The data source `{spec}` names no dataset. Write it hf:NAME or hf:OWNER/NAME/CONFIG.")
    if len(parts) >= 2:
        return "/".join(parts[:2]), "/".join(parts[2:]) or None
    return body, None


def rows_task(rows: list[tuple[str, str, str]], nbytes: int) -> Result:
    """Dataset rows already grouped into (key, title, text) documents."""
    docs = [Doc(k, t, x) for k, t, x in rows if x.strip()]
    empty = len(rows) - len(docs)
    return Result(docs, {"empty": empty} if empty else {}, nbytes)

class HFSource(Source):
    """Rows of a `datasets` dataset (hub name or local file), streamed; the cursor counts rows."""

    kind = "hf"

    def __init__(self, spec: str, split: str = "train") -> None:
        self.spec = spec
        self.name, self.config = parse_name(spec)
        self.split = split
        local = Path(self.name).expanduser()
        self.local = local if local.exists() else None
        self.wikitext = "wikitext" in (self.config or self.name).lower()

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "config": self.config, "split": self.split}
        if self.local is not None:
            files = [self.local] if self.local.is_file() else sorted(p for p in self.local.rglob("*") if p.is_file())
            out["files"] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        return out

    def _dataset(self) -> Any:
        try:
            import datasets
        except ImportError as exc:
            raise DataError(
                f"The data source `{self.spec}` needs the `datasets` package, which is not installed. Install it "
                f"with `pip install datasets`, or download the data and pass --data PATH."
            ) from exc
        try:
            if self.local is not None:
                files = [self.local] if self.local.is_file() else sorted(
                    p for p in self.local.rglob("*") if p.suffix in LOCAL_BUILDERS)
                if not files:
                    raise DataError(f"The data source `{self.spec}` holds no .jsonl, .json, .txt, .parquet or "
                                    f".csv files for `datasets` to read.")
                builder = LOCAL_BUILDERS.get(files[0].suffix, "text")
                return datasets.load_dataset(builder, data_files=[str(p) for p in files], split=self.split,
                                             streaming=True)
            return datasets.load_dataset(self.name, self.config, split=self.split, streaming=True)
        except DataError:
            raise
        except Exception as exc:  # datasets raises many kinds: offline, missing config, hub errors
            raise DataError(
                f"The Hugging Face dataset `{self.spec}` could not be opened ({type(exc).__name__}: "
                f"{str(exc).strip()[:300]}). Check the name and config (hf:OWNER/NAME/CONFIG), the network "
                f"(HF_DATASETS_OFFLINE=1 allows only cached datasets), or download it and pass --data PATH."
            ) from exc

    def tasks(self, cursor: dict[str, Any] | None) -> Iterator[Task]:
        skip = (cursor or {}).get("rows", 0)
        rows: list[tuple[str, str, str]] = []
        nbytes = 0
        article: list[str] = []
        title = ""
        start_row = skip
        n = 0
        for n, row in enumerate(self._dataset(), 1):
            if n <= skip:
                continue
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise DataError(f"The dataset `{self.spec}` has no `text` column of strings (row {n} has "
                                f"{sorted(row) if isinstance(row, dict) else type(row).__name__}).")
            nbytes += len(text.encode("utf-8"))
            if self.wikitext:
                if _WIKITEXT_TITLE.match(text):
                    if article:
                        rows.append((f"{self.name}#{start_row}", title, "".join(article)))
                        article, start_row = [], n - 1
                    title = text.strip(" =\n")
                article.append(text)
            else:
                rows.append((f"{self.name}#{n - 1}", str(row.get("title", "")), text))
            if len(rows) >= ROWS_PER_TASK:
                # WikiText rows grow only at an article's title row, which the cursor leaves unread: a task
                # ends only at an article boundary, so the cursor never splits one.
                yield rows_task, (rows, nbytes), {"rows": n - 1 if self.wikitext else n}
                rows, nbytes = [], 0
        if article:
            rows.append((f"{self.name}#{start_row}", title, "".join(article)))
        if rows:
            yield rows_task, (rows, nbytes), {"rows": n}
