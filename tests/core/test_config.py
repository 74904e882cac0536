"""Config: presets, precedence, coercion, did-you-mean, all problems at once, TOML round trip."""

from __future__ import annotations

import dataclasses

import pytest

from localtrain import config as cfg
from localtrain.errors import ConfigError


@pytest.mark.parametrize("name", ["python-stdlib", "text", "tiny-shakespeare", "wikitext-103", "wikipedia-full",
                                  "gpt2-124m"])
def test_every_preset_is_complete_and_valid(name: str) -> None:
    config = cfg.resolve(name)
    assert config.run.preset == name
    assert config.train.max_steps > 0 or config.train.max_tokens > 0
    assert config.model.n_embd % config.model.n_head == 0
    # A preset is a recipe: it sets its own model shape and schedule, not just the defaults.
    doc = cfg.load_preset(name)[0]
    assert {"n_layer", "n_head", "n_embd", "seq_len"} <= set(doc["model"])
    assert {"batch_size", "lr", "warmup_steps"} <= set(doc["train"])


def test_preset_shapes_match_their_recipes() -> None:
    ts = cfg.resolve("tiny-shakespeare")
    assert (ts.model.n_layer, ts.model.n_head, ts.model.n_embd, ts.model.seq_len) == (4, 4, 128, 64)
    assert (ts.train.batch_size, ts.train.max_steps, ts.data.tokenizer) == (12, 2000, "char")
    wt = cfg.resolve("wikitext-103")
    assert (wt.model.n_layer, wt.model.n_head, wt.model.n_embd, wt.model.seq_len) == (8, 8, 512, 512)
    gpt2 = cfg.resolve("gpt2-124m")
    assert (gpt2.model.n_layer, gpt2.model.n_head, gpt2.model.n_embd, gpt2.model.seq_len) == (12, 12, 768, 1024)


def test_precedence_defaults_preset_overrides() -> None:
    base = cfg.resolve("tiny-shakespeare")
    assert base.train.lr == 1e-3  # preset beats the default 3e-4
    assert base.train.eps == cfg.TrainConfig().eps  # untouched default
    over = cfg.resolve("tiny-shakespeare", ["train.lr=3e-4", "model.n_layer=2", "data.include=[\"*.txt\"]"])
    assert over.train.lr == 3e-4 and over.model.n_layer == 2 and over.data.include == ["*.txt"]
    assert over.run.overrides == ["train.lr=3e-4", "model.n_layer=2", 'data.include=["*.txt"]']


def test_values_are_coerced_to_field_types() -> None:
    c = cfg.resolve("python-stdlib", ["train.max_tokens=1e6", "train.max_time=2", "train.sample_prompts=hello"])
    assert c.train.max_tokens == 1_000_000 and isinstance(c.train.max_tokens, int)
    assert c.train.max_time == 2.0 and isinstance(c.train.max_time, float)
    assert c.train.sample_prompts == ["hello"]


def test_unknown_keys_get_a_did_you_mean() -> None:
    with pytest.raises(ConfigError) as info:
        cfg.resolve("python-stdlib", ["train.lrr=1", "trian.lr=2", "lr=3", "model.nlayer=2", "zzz.qqq=1"])
    p = info.value.problems
    assert len(p) == 5
    assert "Did you mean `train.lr`?" in p[0]
    assert "Did you mean `train.lr`?" in p[1]
    assert "Did you mean `train.lr`?" in p[2]
    assert "Did you mean `model.n_layer`?" in p[3]
    assert "`zzz.qqq`" in p[4] and "localtrain config --keys" in p[4]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        cfg.resolve("python-stdlib", [
            "train.lr=-1", "model.n_head=5", "train.batch_size=abc", "data.tokenizer=bpee",
            "run.device=gpu", "train.dropout=0.1",
        ])
    text = str(info.value)
    assert "6 problems" in text
    assert "`train.lr` = -1.0: must be greater than 0" in text
    assert "must be a multiple of model.n_head=5" in text
    assert "`train.batch_size` = 'abc': must be a whole number" in text
    assert "Did you mean `bpe`?" in text
    assert "`run.device` = 'gpu'" in text
    assert "Did you mean `model.dropout`?" in text


def test_the_schedule_length_defaults_to_20_tokens_per_parameter() -> None:
    from localtrain.batch import total_tokens

    c = cfg.resolve("python-stdlib", ["train.max_steps=0"])
    # 8 x 256 = 2,048 tokens a step; a 1M-parameter model gets 20M tokens, in whole steps.
    assert total_tokens(c, params=1_000_000) == -(-20_000_000 // 2048) * 2048
    assert total_tokens(cfg.resolve("python-stdlib", ["train.max_steps=0", "train.max_tokens=4096"]), 10**6) == 4096
    with pytest.raises(ConfigError, match="run.memory_budget"):
        cfg.resolve("python-stdlib", ["run.memory_budget=lots"])
    assert cfg.resolve("python-stdlib", ["run.memory_budget=1.5GB"]).run.memory_budget == "1.5GB"


def test_unknown_preset_and_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="Did you mean `tiny-shakespeare`"):
        cfg.resolve("tiny-shakespear")
    with pytest.raises(ConfigError, match="key=value"):
        cfg.resolve("python-stdlib", ["train.lr"])


def test_toml_round_trip_and_fingerprints(tmp_path) -> None:
    config = cfg.resolve("tiny-shakespeare", ["train.lr=5e-4"])
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml(config))
    again = cfg.resolve(base=cfg.read_toml(path))
    assert again == config
    moved = dataclasses.replace(config, run=dataclasses.replace(config.run, run_dir="elsewhere"))
    assert moved.fingerprint() == config.fingerprint()
    wider = dataclasses.replace(config, model=dataclasses.replace(config.model, n_embd=256))
    assert wider.fingerprint() != config.fingerprint()
    assert wider.model_fingerprint() != config.model_fingerprint()
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=9))
    assert longer.model_fingerprint() == config.model_fingerprint()
    assert cfg.diff(config, longer) == [("train.max_steps", 2000, 9)]


def test_every_field_has_a_docstring() -> None:
    for cls in cfg.SECTIONS.values():
        docs = cfg.field_docs(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        assert set(docs) == set(names), f"{cls.__name__} fields without docs: {set(names) - set(docs)}"
        assert all(len(d) > 10 for d in docs.values())
