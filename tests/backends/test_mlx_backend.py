"""The MLX backend against the torch backend on the same weights, and on its own."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

mx = pytest.importorskip("mlx.core", reason="needs MLX (pip install 'mlx[cpu]' on Linux)")

from localtrain.backends.mlx_backend import MLXBackend  # noqa: E402
from localtrain.backends.torch_backend import TorchBackend  # noqa: E402
from localtrain.config import ModelConfig, TrainConfig  # noqa: E402
from localtrain.errors import CheckpointError, LocaltrainError  # noqa: E402

from test_torch_backend import reference_logits  # noqa: E402

MODEL = ModelConfig(n_layer=2, n_head=4, n_embd=32, seq_len=16, pad_vocab_multiple=8)
VOCAB = 37


def mlx(model: ModelConfig = MODEL, seed: int = 0, dtype: str = "float32", compile: bool = True, **train) -> MLXBackend:
    b = MLXBackend("cpu", dtype, 0, compile)
    b.build(model, VOCAB, seed)
    b.configure_optimizer(TrainConfig(**{"lr": 1e-2, **train}))
    return b


def torch_backend(model: ModelConfig = MODEL, seed: int = 0, **train) -> TorchBackend:
    b = TorchBackend("cpu", "float32")
    b.build(model, VOCAB, seed)
    b.configure_optimizer(TrainConfig(**{"lr": 1e-2, **train}))
    return b


def batch(seed: int, rows: int = 4, seq_len: int = 16) -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(seed).integers(0, VOCAB, (rows, seq_len + 1)).astype(np.uint16)
    return data[:, :-1], data[:, 1:]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_names_shapes_and_count_are_the_torch_backends() -> None:
    cfg = dataclasses.replace(MODEL, n_kv_head=2)
    wt, _ = torch_backend(cfg).state_arrays()
    m = mlx(cfg)
    wm, moments = m.state_arrays()
    assert moments == {}  # no optimizer step yet
    assert list(wm) == list(wt)
    assert {k: v.shape for k, v in wm.items()} == {k: v.shape for k, v in wt.items()}
    assert all(v.dtype == np.float32 for v in wm.values())
    assert m.num_params() == sum(v.size for v in wm.values())
    # Initialisation follows the same recipe: norms 1, residual outputs narrower.
    assert np.all(wm["model.norm.weight"] == 1.0)
    assert wm["model.layers.0.mlp.down_proj.weight"].std() < wm["model.layers.0.mlp.up_proj.weight"].std()


@pytest.mark.parametrize("kv_heads", [0, 2])
def test_the_same_weights_give_the_same_logits_as_torch(kv_heads: int) -> None:
    cfg = dataclasses.replace(MODEL, n_kv_head=kv_heads, seq_len=64)
    t = torch_backend(cfg, seed=3)
    weights, _ = t.state_arrays()
    m = mlx(cfg, seed=9)
    m.load_state_arrays(weights, None, 0)
    x, y = batch(1, rows=3, seq_len=64)
    with torch.no_grad():
        ours_torch = t.model.logits(t.model.hidden(torch.from_numpy(x.astype(np.int64))))[..., :VOCAB].numpy()
    ours_mlx = m.logits(x)
    assert ours_mlx.shape == (3, 64, VOCAB)
    assert np.abs(ours_mlx - ours_torch).max() < 1e-4
    if not kv_heads:
        ref = reference_logits(weights, cfg, x)[..., :VOCAB].numpy()
        assert np.abs(ours_mlx - ref).max() < 1e-4
    assert np.allclose(m.token_losses(x, y), t.token_losses(x, y), atol=1e-5)


@pytest.mark.parametrize("accum", [1, 2])
def test_one_step_from_the_same_state_matches_torch(accum: int) -> None:
    # Decay, clipping (the norm is above 0.5) and bias correction all act in this step.
    train = {"weight_decay": 0.5, "grad_clip": 0.5, "beta2": 0.99}
    t = torch_backend(seed=1, **train)
    for s in range(3):
        t.train_step([batch(s)], 1e-2)
    weights, moments = t.state_arrays()
    m = mlx(seed=5, **train)
    m.load_state_arrays(weights, moments, opt_step=3)
    x, y = batch(7, rows=4)
    micro = [(x, y)] if accum == 1 else [(x[:2], y[:2]), (x[2:], y[2:])]
    rt, rm = t.train_step(micro, 2e-2), m.train_step(micro, 2e-2)
    assert rm.loss == pytest.approx(rt.loss, rel=1e-6)
    assert rm.grad_norm == pytest.approx(rt.grad_norm, rel=1e-5) and rt.grad_norm > 0.5
    wt, mt = t.state_arrays()
    wm, mm = m.state_arrays()
    assert set(mm) == set(mt)
    for k in wt:
        assert rel(wt[k], wm[k]) < 1e-5, k
        # The step moved the weights by far more than the tolerance.
        assert rel(wt[k], weights[k]) > 1e-3, k
    assert max(rel(mt[k], mm[k]) for k in mt) < 1e-5


def test_weight_decay_spares_norms_and_the_embedding() -> None:
    m = mlx(weight_decay=0.5)
    assert m.decayed == {k for k, s in m.shapes.items() if len(s) == 2 and "embed_tokens" not in k}
    assert len(m.decayed) == MODEL.n_layer * 7


def test_gradient_accumulation_equals_one_big_batch() -> None:
    x, y = batch(5, rows=8)
    one, two = mlx(seed=2), mlx(seed=2)
    r1 = one.train_step([(x, y)], 1e-2)
    r2 = two.train_step([(x[:4], y[:4]), (x[4:], y[4:])], 1e-2)
    assert r1.loss == pytest.approx(r2.loss, abs=1e-6)
    assert r1.grad_norm == pytest.approx(r2.grad_norm, rel=1e-5)
    w1, _ = one.state_arrays()
    w2, _ = two.state_arrays()
    assert max(np.abs(w1[k] - w2[k]).max() for k in w1) < 1e-4


def test_training_lowers_the_loss_and_token_losses_match_the_mean() -> None:
    m = mlx()
    x, y = batch(6)
    first = m.train_step([(x, y)], 1e-2).loss
    for _ in range(30):
        last = m.train_step([(x, y)], 1e-2).loss
    assert last < first * 0.5
    per_token = m.token_losses(x, y)
    assert per_token.shape == y.shape
    # The loss normalises over every embedding row, the padded ones included.
    z = _full_logits(m, x)
    assert z.shape[-1] == 40
    nll = np.log(np.exp(z).sum(-1)) - np.take_along_axis(z, y[..., None].astype(np.int64), -1)[..., 0]
    assert np.allclose(per_token, nll, atol=1e-4)


def _full_logits(m: MLXBackend, x: np.ndarray) -> np.ndarray:
    from localtrain.backends import mlx_model

    h = mlx_model.hidden(m.params, mx.array(x.astype(np.int32)), m.cfg, mx.float32)
    return np.array(mlx_model.logits(m.params, h, mx.float32)).astype(np.float64)


def test_compiled_and_eager_steps_agree() -> None:
    a, b = mlx(seed=2, compile=True), mlx(seed=2, compile=False)
    for s in range(3):
        ra, rb = a.train_step([batch(s)], 1e-2), b.train_step([batch(s)], 1e-2)
        assert ra.loss == pytest.approx(rb.loss, rel=1e-5)
    wa, _ = a.state_arrays()
    wb, _ = b.state_arrays()
    assert max(rel(wa[k], wb[k]) for k in wa) < 1e-4


def test_activation_checkpointing_changes_nothing_but_memory() -> None:
    cfg = dataclasses.replace(MODEL, dropout=0.1)
    a, b = mlx(cfg, seed=2), mlx(cfg, seed=2)
    b.set_activation_checkpointing(True)
    for s in range(2):
        ra, rb = a.train_step([batch(s)], 1e-2), b.train_step([batch(s)], 1e-2)
        assert ra.loss == pytest.approx(rb.loss, rel=1e-5)
        assert ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-4)


def test_dropout_is_compiled_with_its_key_and_restores_exactly() -> None:
    m = mlx(dataclasses.replace(MODEL, dropout=0.2), seed=5, lr=0.0)
    state = m.rng_state()
    assert json.loads(json.dumps(state)) == state
    weights, _ = m.state_arrays()
    x, y = batch(1)
    # lr 0: the weights stay put, so different losses mean different dropout masks.
    losses = [m.train_step([(x, y)], 0.0).loss for _ in range(3)]
    assert len(set(losses)) == 3
    m.load_state_arrays(weights, None, 0)
    m.set_rng_state(state)
    assert [m.train_step([(x, y)], 0.0).loss for _ in range(3)] == losses


def test_generation_with_the_kv_cache_equals_full_recomputation() -> None:
    m = mlx(seed=4)
    for s in range(5):
        m.train_step([batch(s)], 1e-2)
    prompt = [3, 1, 4, 1, 5]
    out = m.generate(prompt, 30, temperature=1.0, top_k=1, seed=0)
    seq, window_start = list(prompt), 0
    for _ in range(30):
        ctx = seq[window_start:]
        if len(ctx) > MODEL.seq_len:
            window_start = len(seq) - MODEL.seq_len // 2
            ctx = seq[window_start:]
        seq.append(int(m.logits(np.array([ctx]))[0, -1].argmax()))
    assert out == seq[len(prompt):]
    # A nucleus too small for a second token is greedy too.
    assert m.generate(prompt, 30, temperature=1.0, top_k=0, seed=3, top_p=1e-6) == out


def test_sampling_is_seeded_and_leaves_the_training_rng_alone() -> None:
    m = mlx(dataclasses.replace(MODEL, dropout=0.1))
    state = m.rng_state()
    a1 = m.generate([1, 2], 20, 1.0, 0, seed=7)
    a2 = m.generate([1, 2], 20, 1.0, 0, seed=7)
    a3 = m.generate([1, 2], 20, 1.0, 0, seed=8)
    assert a1 == a2 and a1 != a3
    assert all(0 <= t < VOCAB for t in a1)  # padded rows are never sampled
    assert m.rng_state() == state


def test_bfloat16_trains_close_to_float32() -> None:
    a, b = mlx(seed=2), mlx(seed=2, dtype="bfloat16")
    x, y = batch(3)
    la = [a.train_step([(x, y)], 1e-2).loss for _ in range(10)]
    lb = [b.train_step([(x, y)], 1e-2).loss for _ in range(10)]
    assert lb[-1] < lb[0] - 0.3
    assert max(abs(p - q) for p, q in zip(la, lb)) < 0.05
    assert lb != la  # it really computed in bfloat16
    w, _ = b.state_arrays()
    assert all(v.dtype == np.float32 for v in w.values())  # float32 master weights


def test_a_checkpoint_of_another_shape_is_refused_with_names_and_shapes() -> None:
    weights, moments = torch_backend().state_arrays()
    wider = mlx(dataclasses.replace(MODEL, n_embd=64))
    with pytest.raises(CheckpointError) as err:
        wider.load_state_arrays(weights, None, 0)
    text = str(err.value)
    assert "model.embed_tokens.weight has shape (40, 32), the model needs (40, 64)" in text
    assert "different model shape or vocabulary" in text

    partial = dict(weights)
    del partial["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing \(model\.layers\.1\.mlp\.up_proj\.weight \(96, 32\)\)"):
        mlx().load_state_arrays(partial, None, 0)

    t = torch_backend()
    t.train_step([batch(0)], 1e-2)
    weights, moments = t.state_arrays()
    del moments["model.norm.weight.exp_avg_sq"]
    m = mlx()
    before, _ = m.state_arrays()
    with pytest.raises(CheckpointError, match="lacks `model.norm.weight.exp_avg_sq`"):
        m.load_state_arrays(weights, moments, 1)
    after, _ = m.state_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(LocaltrainError, match="float32 or bfloat16"):
        MLXBackend("cpu", "float16")
    if not (mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available())):
        with pytest.raises(LocaltrainError, match="--device cuda: MLX .* has no GPU here"):
            MLXBackend("cuda")


def test_peak_memory_and_peak_flops_are_measured() -> None:
    m = mlx()
    m.train_step([batch(0)], 1e-2)
    # At least the weights, both moments and the gradients were held during the step.
    assert m.memory_bytes() >= 4 * 4 * m.num_params()
    before = m.rng_state()
    peak = m.measure_peak_flops()
    assert m.rng_state() == before
    assert 1e8 < peak < 1e15
    assert m.peak_key().startswith("mlx-") and "float32" in m.peak_key()
