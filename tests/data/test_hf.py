"""The Hugging Face `datasets` source, on local files and offline (no hub access)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from localtrain.config import DataConfig
from localtrain.data.hf import HFSource, parse_name
from localtrain.data.prepare import prepare
from localtrain.data.stream import run_tasks
from localtrain.errors import DataError

pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline as HF_DATASETS_OFFLINE=1 makes it. The libraries read the variables once, when first
    imported (here at collection, or by an earlier test), so their flags are set too: otherwise the
    hub client retries the network with backoff (23 s) before it fails."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for module, name in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                         (huggingface_hub.constants, "HF_HUB_OFFLINE")):
        monkeypatch.setattr(module, name, True, raising=False)


def test_names() -> None:
    assert parse_name("hf:Salesforce/wikitext/wikitext-103-raw-v1") == ("Salesforce/wikitext", "wikitext-103-raw-v1")
    assert parse_name("hf:Skylion007/openwebtext") == ("Skylion007/openwebtext", None)


def test_wikitext_lines_become_articles_and_the_cursor_resumes(tmp_path: Path) -> None:
    lines = []
    for a in range(3):
        lines += [f" = Article {a} = \n", "\n", f" Body of article {a} , first line . \n", " = = Section = = \n",
                  f" More about {a} . \n"]
    path = tmp_path / "wikitext-rows.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    source = HFSource(f"hf:{path}")
    docs = [d for r, _ in run_tasks(source.tasks(None), 1) for d in r.docs]
    assert [d.title for d in docs] == ["Article 0", "Article 1", "Article 2"]
    assert docs[1].text == "".join(lines[5:10])
    resumed = [d for r, _ in run_tasks(source.tasks({"rows": 5}), 1) for d in r.docs]
    assert resumed == docs[1:]


def test_prepare_from_a_local_jsonl_through_datasets(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"Row {i}: " + "some words here. " * 20}) + "\n" for i in range(60)))
    data = dataclasses.replace(DataConfig(), source=f"hf:{path}", tokenizer="char", character_coverage=1.0,
                               cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    prepared = prepare(data, lambda e: None, threads=1)
    m = prepared.meta
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 60
    assert m["sources"][0]["kind"] == "hf" and m["sources"][0]["cursor"] == {"rows": 60}


def test_an_unavailable_hub_dataset_fails_clearly(tmp_path: Path) -> None:
    data = dataclasses.replace(DataConfig(), source="hf:nobody/no-such-dataset-xyz", cache_dir=str(tmp_path))
    with pytest.raises(DataError) as err:
        prepare(data, lambda e: None, threads=1)
    assert "hf:nobody/no-such-dataset-xyz" in str(err.value) and "--data PATH" in str(err.value)
