"""`localtrain export`: checked by the clients that load it (transformers, its tokenizers, mlx-lm)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CORPUS_MODULES, localtrain
from localtrain.config import DataConfig
from localtrain.data.tokenizer import Tokenizer, train_tokenizer
from localtrain.export import export, load_source, tokenizer_config, tokenizer_json
from localtrain.weights import read_safetensors
from localtrain.sample import build_backend
from localtrain.sampling import generate

transformers = pytest.importorskip("transformers", reason="needs transformers (the test extra)")
torch = pytest.importorskip("torch")

FILES = [".localtrain", "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
         "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
TRICKY = [
    "def f(x):\n    return  x\t+ 1\n\n\n  # é ü 日本語 🎉\r\n", "    indented\n\tTabbed\n", "   ", "\n", "\n\n\n",
    "trailing   ", "x" * 60, "class A:\n    '''Doc.'''\n\n    def m(self) -> None:\n        pass\n",
]


def code_texts(code_corpus: Path) -> list[str]:
    """Whole files, random slices (cut anywhere, mid-word and mid-indent) and hand-picked cases."""
    files = [(code_corpus / m).read_text() for m in CORPUS_MODULES[:4]]
    joined = "".join(files)
    rnd = random.Random(0)
    starts = [rnd.randrange(len(joined)) for _ in range(200)]
    return files + [joined[s : s + rnd.randint(1, 300)] for s in starts] + TRICKY


def token_ids(trained_run: Path, text: str) -> list[int]:
    return Tokenizer.load(trained_run / "tokenizer.model").encode(text)


def test_transformers_loads_the_export_with_the_same_logits(trained_run, tmp_path, cache_dir, code_corpus) -> None:
    out = tmp_path / "hf"
    done = localtrain(["export", str(trained_run), "--out", str(out)], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr
    assert "Exported" in done.stdout and sorted(p.name for p in out.iterdir()) == FILES
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 600 and config["num_key_value_heads"] == 1  # padded rows dropped; GQA kept

    model = transformers.LlamaForCausalLM.from_pretrained(out)
    source = load_source(trained_run, "best")
    assert source.origin.name == "best"
    ours = build_backend(source, "torch")
    ids = token_ids(trained_run, (code_corpus / "textwrap.py").read_text())[:32]
    x = torch.tensor([ids])
    with torch.no_grad():
        theirs = model(x).logits[0].numpy()
        mine = ours.model.logits(ours.model.hidden(x))[0, :, :600].numpy()
    assert theirs.shape == (len(ids), 600)
    assert np.abs(theirs - mine).max() < 1e-4
    # The comparison sees the positions: the same weights read with another rope_theta disagree.
    moved = tmp_path / "another-rope"
    shutil.copytree(out, moved)
    (moved / "config.json").write_text(json.dumps({**config, "rope_theta": 2 * config["rope_theta"]}))
    other = transformers.LlamaForCausalLM.from_pretrained(moved)
    with torch.no_grad():
        assert np.abs(other(x).logits[0].numpy() - mine).max() > 1e-2


def test_both_tokenizer_classes_give_localtrains_ids(trained_run, tmp_path, cache_dir, code_corpus) -> None:
    out = tmp_path / "hf"
    assert localtrain(["export", str(trained_run), "--out", str(out)], tmp_path, cache_dir).returncode == 0
    tok = Tokenizer.load(trained_run / "tokenizer.model")
    for cls in (transformers.AutoTokenizer, transformers.LlamaTokenizer):
        hf = cls.from_pretrained(out)
        for text in code_texts(code_corpus):
            assert hf.encode(text) == tok.encode(text), (cls.__name__, text[:60])  # no BOS added either
        ids = tok.encode(TRICKY[0])
        assert hf.decode(ids) == tok.decode(ids) == TRICKY[0]


@pytest.mark.parametrize("kind", ["bpe", "char", "unigram"])
def test_the_tokenizer_files_reproduce_every_tokenizer_type(kind, tmp_path, code_corpus) -> None:
    texts = code_texts(code_corpus)
    data = DataConfig(tokenizer=kind, vocab_size=800, vocab_fit="exact", character_coverage=0.9999 if kind == "char" else 0.9995)
    tok = train_tokenizer([(code_corpus / m).read_text() for m in CORPUS_MODULES], data,
                          lambda e: None)
    (tmp_path / "tokenizer.model").write_bytes(tok.model_bytes)
    spec = tokenizer_json(tok.model_bytes, kind)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(spec["added_tokens"], kind, 64)))
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    differ = [t for t in texts if auto.encode(t) != tok.encode(t)]
    if kind != "unigram":
        assert differ == []
    else:
        # Unigram: the same ids except where two segmentations score exactly the same
        # (sentencepiece sums float32 scores, `tokenizers` float64, so ties break apart).
        assert len(differ) <= len(texts) // 50
        scores = {p: s for p, s in spec["model"]["vocab"]}
        pieces = tok.pieces()
        for t in differ:
            ours, theirs = tok.encode(t), auto.encode(t)
            assert tok.decode(theirs) == tok.decode(ours)
            assert sum(scores[pieces[i]] for i in ours) == pytest.approx(sum(scores[pieces[i]] for i in theirs), rel=1e-5)
    if kind == "char":
        # LlamaTokenizer builds a byte-fallback bpe without an unknown token: characters
        # outside a char vocabulary (no byte pieces) are dropped instead of becoming <unk>.
        llama = transformers.LlamaTokenizer.from_pretrained(tmp_path)
        for t in texts:
            assert llama.encode(t) == [i for i in tok.encode(t) if i != tok.unk_id]
        assert any(tok.unk_id in tok.encode(t) for t in texts)  # the case really occurs


def test_mlx_lm_loads_and_generates_from_both_formats(trained_run, tmp_path, cache_dir) -> None:
    mlx_lm = pytest.importorskip("mlx_lm", reason="needs mlx-lm")
    import mlx.core as mx

    source = load_source(trained_run, "latest")
    ours = build_backend(source, "mlx", "cpu")
    prompt = "class A:\n    def "
    ids = token_ids(trained_run, prompt)
    greedy = generate(ours, ids, 8, 1.0, 1, seed=0)
    # No end-of-text among them: mlx-lm must produce all eight.
    assert Tokenizer.load(source.tokenizer_path).eos_id not in greedy
    for fmt in ("hf", "mlx"):
        out = tmp_path / fmt
        done = localtrain(["export", str(trained_run), "--checkpoint", "latest", "--format", fmt, "--out", str(out)],
                          tmp_path, cache_dir)
        assert done.returncode == 0, done.stderr
        model, tokenizer = mlx_lm.load(str(out))
        assert tokenizer.encode(prompt) == ids
        logits = np.array(model(mx.array([ids])))[0]
        assert np.abs(logits - ours.logits(np.array([ids]))[0]).max() < 1e-4
        tokens = [r.token for r in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=8)]
        assert tokens == greedy, f"mlx-lm's greedy tokens {tokens}, localtrain's {greedy}"
        assert isinstance(mlx_lm.generate(model, tokenizer, prompt, max_tokens=8), str)
    with open(tmp_path / "mlx" / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"] == {"format": "mlx"}


def test_bfloat16_export_rounds_like_torch_and_loads(trained_run, tmp_path) -> None:
    source = load_source(trained_run, "best")
    out = export(source, tmp_path / "bf16", dtype="bfloat16")
    back = read_safetensors(out / "model.safetensors")
    for name, w in source.weights.items():
        want = torch.from_numpy(w[:600] if "embed" in name else w).to(torch.bfloat16).float().numpy()
        assert np.array_equal(back[name], want), name
    model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_an_occupied_out_dir_is_never_touched(trained_run, tmp_path, cache_dir) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for force in ([], ["--force"]):  # --force replaces only an export localtrain wrote
        done = localtrain(["export", str(trained_run), "--out", str(out), *force], tmp_path, cache_dir)
        assert done.returncode == 2
        assert "localtrain did not create it" in done.stderr and "Nothing was written" in done.stderr
        assert "Traceback" not in done.stderr
        assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_force_replaces_an_export_and_keeps_what_was_added_to_it(trained_run, tmp_path, cache_dir) -> None:
    out = tmp_path / "hf"
    first = localtrain(["export", str(trained_run), "--out", str(out), "--checkpoint", "step-10"], tmp_path, cache_dir)
    assert first.returncode == 0, first.stderr
    again = localtrain(["export", str(trained_run), "--out", str(out)], tmp_path, cache_dir)
    assert again.returncode == 2 and "already exists and is not empty; nothing was written" in again.stderr
    (out / "README.md").write_text("my model card")
    old = (out / "model.safetensors").read_bytes()
    forced = localtrain(["export", str(trained_run), "--out", str(out), "--force"], tmp_path, cache_dir)
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "README.md"])
    assert (out / "README.md").read_text() == "my model card" and (out / "model.safetensors").read_bytes() != old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))] == []


@pytest.mark.parametrize("args,message", [
    (["{tmp}", "--out", "x"], "is neither a run directory"),
    (["{run}", "--checkpoint", "step-7", "--out", "x"],
     "has no complete checkpoint at step 7 (it has: step-00000010, step-00000020)"),
    (["{run}", "--checkpoint", "newest", "--out", "x"], "best, latest or step-N"),
], ids=["not-a-run", "absent-step", "unknown-name"])
def test_bad_sources_are_clear_errors(args, message, trained_run, tmp_path, cache_dir) -> None:
    done = localtrain(["export", *(a.format(run=trained_run, tmp=tmp_path) for a in args)], tmp_path, cache_dir)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x").exists()


def test_a_temporary_export_killed_before_its_marker_is_cleared_and_a_users_folder_is_not(tmp_path) -> None:
    import subprocess
    import sys

    from localtrain.export import _remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)  # a process that is gone
    empty, half, users = (tmp_path / f".tmp-x-{pid}", tmp_path / f".old-x-{pid}", tmp_path / f".tmp-x-{pid + 1}")
    for d in (empty, half, users):
        d.mkdir()
    (half / f"..localtrain.tmp{pid}").write_text('{"kind": "exp')  # the marker, cut off mid-write
    (users / "notes.txt").write_text("mine")  # not an export, and named for another pid
    _remove_stale_temps(tmp_path / "x")
    assert not empty.exists() and not half.exists()
    assert (users / "notes.txt").read_text() == "mine"

