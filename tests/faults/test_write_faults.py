"""ENOSPC and EIO at every write site of a run (its checkpoints included), a preparation and an export.

The sites are found by recording a clean run through the write layer (`files._do`);
then each site fails once with ENOSPC and once with EIO, at an occurrence drawn from
SEED. Every fault must end in a one-paragraph error naming the path (no traceback),
leave everything written before it valid, and a rerun on a disk that works again (for
a run: `--resume auto`, after ENOSPC) must end with the same bytes as a run that never
failed.
"""

from __future__ import annotations

import errno
import random
import shutil
from pathlib import Path

import pytest
from fault_helpers import MESSAGES, SEED, Injector, digest, nothing_lost, run_args, tree

from localtrain import events as ev
from localtrain.cli import main
from localtrain.config import DataConfig
from localtrain.data import prepare as prepare_module
from localtrain.errors import LocaltrainError
from localtrain.export import export, load_source

CODES = (errno.ENOSPC, errno.EIO)


def test_every_write_site_of_a_run_and_its_checkpoints(tmp_path, monkeypatch, capsys, code_corpus) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(run_args(code_corpus, "r")) == 0  # warms the data and measurement caches
    shutil.rmtree("r")
    injector = Injector()
    with injector.failing(monkeypatch):
        assert main(run_args(code_corpus, "r")) == 0
    counts = dict(injector.counts)
    final = Path("r/checkpoints/step-00000008/model.safetensors")
    reference = digest(final)
    sites = sorted(s for s in counts if s.startswith("r/"))
    with capsys.disabled():
        print(f"seed {SEED}: {len(sites)} write sites of a run: {sites}")
    assert {"r/config.toml", "r/events.jsonl", "r/checkpoints/.tmp-step-N-N/model.safetensors",
            "r/checkpoints/.tmp-step-N-N/state.json", "r/.tmp-best-N/COMPLETE"} <= set(sites)
    rng = random.Random(SEED)
    for where in sites:
        for code in CODES:
            shutil.rmtree("r")
            nth = rng.randint(1, counts[where])
            with injector.failing(monkeypatch, where, nth, code):
                failed = main(run_args(code_corpus, "r"))
            err = capsys.readouterr().err
            context = f"seed {SEED}: {errno.errorcode[code]} at {injector.fired} (call {nth} of {where}): {err}"
            assert injector.fired and failed == 2, context
            assert MESSAGES[code] in err and "Traceback" not in err, context
            nothing_lost(Path("r"))
            if Path("r/events.jsonl").exists():
                assert isinstance(ev.read_events(Path("r/events.jsonl"))[-1], ev.Error), context
            if code == errno.ENOSPC:
                assert main(run_args(code_corpus, "r", "--resume", "auto")) == 0, context
                assert digest(final) == reference, context
                capsys.readouterr()


def data_config(corpus: Path) -> DataConfig:
    return DataConfig(source=str(corpus), tokenizer="char", character_coverage=1.0, document_bytes=4096,
                      shard_tokens=65536)


def test_every_write_site_of_a_preparation(tmp_path, monkeypatch, code_corpus) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(prepare_module, "COMMIT_BYTES", 64_000)  # several commits
    data = data_config(code_corpus)
    injector = Injector()
    with injector.failing(monkeypatch):
        ref = prepare_module.prepare(data, lambda e: None, threads=1, out_dir="p")
    counts = dict(injector.counts)
    expected = tree(ref.dir, skip=(".lock", ".localtrain", "manifest.json"))
    shutil.move("p", "ref")
    sites = sorted(s for s in counts if s.startswith("p/"))
    print(f"seed {SEED}: {len(sites)} write sites of a preparation: {sites}")
    assert {"p/manifest.json", "p/tokenizer.model", "p/seen.bin", "p/train-N.bin"} <= set(sites)
    rng = random.Random(SEED + 1)
    for where in sites:
        for code in CODES:
            shutil.rmtree("p", ignore_errors=True)
            nth = rng.randint(1, counts[where])
            with injector.failing(monkeypatch, where, nth, code), pytest.raises(LocaltrainError) as info:
                prepare_module.prepare(data, lambda e: None, threads=1, out_dir="p")
            context = f"seed {SEED}: {errno.errorcode[code]} at {injector.fired} (call {nth} of {where})"
            assert injector.fired and MESSAGES[code] in str(info.value), context
            again = prepare_module.prepare(data, lambda e: None, threads=1, out_dir="p")
            assert again.meta["complete"] and tree(again.dir, skip=(".lock", ".localtrain", "manifest.json")) \
                == expected, context


def test_every_write_site_of_an_export_new_or_replacing(trained_run, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    best, older = load_source(trained_run, "best"), load_source(trained_run, "step-10")
    export(older, Path("old"))
    export(best, Path("ref"))
    injector = Injector()
    with injector.failing(monkeypatch):
        shutil.copytree("old", "x")
        export(best, Path("x"), force=True)
    counts = dict(injector.counts)
    sites = sorted(s for s in counts if s.startswith((".tmp-x", ".old-x", "x")))
    print(f"seed {SEED}: {len(sites)} write sites of an export: {sites}")
    rng = random.Random(SEED + 2)
    for where in sites:
        for code in CODES:
            shutil.rmtree("x")
            shutil.copytree("old", "x")
            nth = rng.randint(1, counts[where])
            with injector.failing(monkeypatch, where, nth, code), pytest.raises(LocaltrainError) as info:
                export(best, Path("x"), force=True)
            context = f"seed {SEED}: {errno.errorcode[code]} at {injector.fired} (call {nth} of {where})"
            assert injector.fired and MESSAGES[code] in str(info.value), context
            # The old export, or the new one, whole: never a mix.
            assert tree(Path("x")) in (tree(Path("old")), tree(Path("ref"))) or (
                tree(Path("x"), skip=(".localtrain",)) in (tree(Path("old"), skip=(".localtrain",)),
                                                             tree(Path("ref"), skip=(".localtrain",)))), context
            export(best, Path("x"), force=True)
            assert tree(Path("x"), skip=(".localtrain",)) == tree(Path("ref"), skip=(".localtrain",)), context
            assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))], context
