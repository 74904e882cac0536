"""The torch backend and model, checked against a plain reference implementation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from localtrain.backends.torch_backend import TorchBackend
from localtrain.backends.torch_model import apply_rope
from localtrain.config import ModelConfig, TrainConfig

MODEL = ModelConfig(n_layer=2, n_head=4, n_embd=32, seq_len=16, pad_vocab_multiple=8)
VOCAB = 37


def backend(model: ModelConfig = MODEL, seed: int = 0, **train) -> TorchBackend:
    b = TorchBackend("cpu")
    b.build(model, VOCAB, seed)
    b.configure_optimizer(TrainConfig(**{"lr": 1e-2, **train}))
    return b


def batch(seed: int, rows: int = 4, seq_len: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, VOCAB, (rows, seq_len + 1)).astype(np.uint16)
    return data[:, :-1], data[:, 1:]


def reference_logits(w: dict[str, np.ndarray], cfg: ModelConfig, idx: np.ndarray) -> torch.Tensor:
    """A Hugging Face-style Llama forward from the shared tensors: rotate-half rope, SwiGLU."""
    t = {k: torch.from_numpy(v).double() for k, v in w.items()}
    x = t["model.embed_tokens.weight"][torch.from_numpy(idx.astype(np.int64))]
    B, T, _ = x.shape
    hd, nh = cfg.head_dim, cfg.n_head
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rot(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([-v[..., hd // 2:], v[..., : hd // 2]], -1)

    def norm(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * weight

    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        h = norm(x, t[p + "input_layernorm.weight"])
        q, k, v = (
            (h @ t[p + f"self_attn.{n}_proj.weight"].T).view(B, T, nh, hd).transpose(1, 2) for n in "qkv"
        )
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + y @ t[p + "self_attn.o_proj.weight"].T
        h = norm(x, t[p + "post_attention_layernorm.weight"])
        gate, up = h @ t[p + "mlp.gate_proj.weight"].T, h @ t[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ t[p + "mlp.down_proj.weight"].T
    return norm(x, t["model.norm.weight"]) @ t["model.embed_tokens.weight"].T


def test_shared_names_and_shapes_are_the_llama_layout() -> None:
    b = backend(dataclasses.replace(MODEL, n_kv_head=2))
    weights, moments = b.state_arrays()
    assert moments == {}  # no optimizer step yet
    shapes = {k: v.shape for k, v in weights.items()}
    assert shapes["model.embed_tokens.weight"] == (40, 32)  # 37 padded to a multiple of 8
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (32, 32)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (16, 32)  # 2 kv heads of 8
    assert shapes["model.layers.1.mlp.gate_proj.weight"] == (MODEL.ffn_size, 32)
    assert shapes["model.layers.1.mlp.down_proj.weight"] == (32, MODEL.ffn_size)
    assert shapes["model.norm.weight"] == (32,)
    assert len(weights) == 1 + 2 * 9 + 1
    assert "lm_head.weight" not in weights  # tied
    assert b.num_params() == sum(v.size for v in weights.values())


@pytest.mark.parametrize("kv_heads", [0, 2])
def test_logits_match_a_reference_llama_on_the_shared_tensors(kv_heads: int) -> None:
    cfg = dataclasses.replace(MODEL, n_kv_head=kv_heads)
    b = backend(cfg, seed=3)
    weights, _ = b.state_arrays()
    x, y = batch(1)
    ours = b.model.logits(b.model.hidden(torch.from_numpy(x.astype(np.int64)))).double()
    if kv_heads:
        w = dict(weights)
        for i in range(cfg.n_layer):
            for n in "kv":
                key = f"model.layers.{i}.self_attn.{n}_proj.weight"
                w[key] = np.repeat(w[key].reshape(kv_heads, cfg.head_dim, -1), cfg.n_head // kv_heads, 0).reshape(
                    cfg.n_head * cfg.head_dim, -1)
        weights = w
    ref = reference_logits(weights, cfg, x)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_complex_and_real_rope_agree() -> None:
    x = torch.randn(2, 5, 3, 8)
    angles = torch.rand(5, 4) * 6
    cos, sin = angles.cos(), angles.sin()
    rot = torch.complex(cos, sin)[:, None, :]
    assert torch.allclose(apply_rope(x, cos, sin, rot), apply_rope(x, cos, sin, None), atol=1e-6)


def test_the_real_arithmetic_rope_path_gives_the_same_model() -> None:
    b = backend(seed=3)
    x, _ = batch(1)
    idx = torch.from_numpy(x.astype(np.int64))
    fast = b.model.logits(b.model.hidden(idx))
    b.model.complex_rope = False
    assert torch.allclose(fast, b.model.logits(b.model.hidden(idx)), atol=1e-5)


def test_attention_is_causal() -> None:
    b = backend()
    x, _ = batch(2)
    full = b.model.logits(b.model.hidden(torch.from_numpy(x.astype(np.int64))))
    x2 = x.copy()
    x2[:, 10:] = (x2[:, 10:] + 1) % VOCAB
    changed = b.model.logits(b.model.hidden(torch.from_numpy(x2.astype(np.int64))))
    assert torch.equal(full[:, :10], changed[:, :10])
    assert not torch.allclose(full[:, 10:], changed[:, 10:])


def test_state_round_trips_exactly_between_backends() -> None:
    a = backend(seed=1)
    for s in range(3):
        a.train_step([batch(s)], 1e-2)
    weights, moments = a.state_arrays()
    assert set(moments) == {f"{k}.{m}" for k in weights for m in ("exp_avg", "exp_avg_sq")}
    b = backend(seed=99)
    b.load_state_arrays(weights, moments, opt_step=3)
    w2, m2 = b.state_arrays()
    assert all(np.array_equal(weights[k], w2[k]) for k in weights)
    assert all(np.array_equal(moments[k], m2[k]) for k in moments)
    # The next step is identical too: the moments and the step count carried over.
    ra, rb = a.train_step([batch(7)], 1e-2), b.train_step([batch(7)], 1e-2)
    assert ra.loss == rb.loss
    wa, _ = a.state_arrays()
    wb, _ = b.state_arrays()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_loading_the_wrong_shape_says_what_differs() -> None:
    weights, _ = backend().state_arrays()
    other = backend(dataclasses.replace(MODEL, n_embd=64))
    with pytest.raises(Exception, match="different model shape or vocabulary"):
        other.load_state_arrays(weights, None, 0)


def test_gradient_accumulation_equals_one_big_batch() -> None:
    x, y = batch(5, rows=8)
    one, two = backend(seed=2), backend(seed=2)
    r1 = one.train_step([(x, y)], 1e-2)
    r2 = two.train_step([(x[:4], y[:4]), (x[4:], y[4:])], 1e-2)
    assert r1.loss == pytest.approx(r2.loss, abs=1e-6)
    assert r1.grad_norm == pytest.approx(r2.grad_norm, rel=1e-5)
    w1, _ = one.state_arrays()
    w2, _ = two.state_arrays()
    # Adam's first update is about lr x sign(gradient), so float rounding in the two sums
    # shows up only on near-zero gradients; 1% of one lr step bounds it.
    assert max(np.abs(w1[k] - w2[k]).max() for k in w1) < 1e-4


def test_weight_decay_spares_norms_and_embeddings() -> None:
    b = backend(weight_decay=0.5)
    groups = b.optimizer.param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.5 and groups[1]["weight_decay"] == 0.0
    for name, p in b.model.named_parameters():
        assert (id(p) in decayed) == (p.dim() == 2 and "embed_tokens" not in name), name


def test_clipping_reports_the_norm_before_clipping() -> None:
    b = backend(grad_clip=0.01)
    x, y = batch(4)
    ref = backend(grad_clip=0.01)
    loss = ref.model(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)))
    loss.backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in ref.model.parameters())).item()
    result = b.train_step([(x, y)], 1e-2)
    assert result.grad_norm == pytest.approx(norm, rel=1e-5)
    assert result.grad_norm > 0.01


def test_training_lowers_the_loss_and_token_losses_match_the_mean() -> None:
    b = backend()
    x, y = batch(6)
    first = b.train_step([(x, y)], 1e-2).loss
    for _ in range(30):
        last = b.train_step([(x, y)], 1e-2).loss
    assert last < first * 0.5
    per_token = b.token_losses(x, y)
    assert per_token.shape == y.shape
    with torch.no_grad():
        b.model.eval()
        mean = b.model(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))).item()
    assert per_token.mean() == pytest.approx(mean, rel=1e-5)


def test_generation_with_the_kv_cache_equals_full_recomputation() -> None:
    b = backend(seed=4)
    for s in range(5):
        b.train_step([batch(s)], 1e-2)
    prompt = [3, 1, 4, 1, 5]
    # top_k=1 is greedy: compare with argmax over a full forward pass at every step,
    # running past the context length (16) so the window restart is covered too.
    out = b.generate(prompt, 30, temperature=1.0, top_k=1, seed=0)
    seq = list(prompt)
    window_start = 0
    for _ in range(30):
        ctx = seq[window_start:]
        if len(ctx) > MODEL.seq_len:
            window_start = len(seq) - MODEL.seq_len // 2
            ctx = seq[window_start:]
        with torch.no_grad():
            logits = b.model.logits(b.model.hidden(torch.tensor([ctx])))[0, -1, :VOCAB]
        seq.append(int(logits.argmax()))
    assert out == seq[len(prompt):]


def test_sampling_is_seeded_and_leaves_the_training_rng_alone() -> None:
    b = backend(dataclasses.replace(MODEL, dropout=0.1))
    state = b.rng_state()
    a1 = b.generate([1, 2], 20, 1.0, 0, seed=7)
    a2 = b.generate([1, 2], 20, 1.0, 0, seed=7)
    a3 = b.generate([1, 2], 20, 1.0, 0, seed=8)
    assert a1 == a2 and a1 != a3
    assert all(0 <= t < VOCAB for t in a1)  # padded rows are never sampled
    assert b.rng_state() == state


def test_rng_state_restores_dropout_exactly() -> None:
    b = backend(dataclasses.replace(MODEL, dropout=0.2), seed=5)
    state = b.rng_state()
    weights, _ = b.state_arrays()
    first = b.train_step([batch(1)], 1e-2).loss
    b.load_state_arrays(weights, None, 0)
    b.optimizer.state.clear()
    b.set_rng_state(state)
    assert b.train_step([batch(1)], 1e-2).loss == first


def test_peak_flops_is_measured() -> None:
    b = TorchBackend("cpu")
    before = b.rng_state()
    peak = b.measure_peak_flops()
    assert b.rng_state() == before  # measuring never moves the dropout generator
    assert 1e8 < peak < 1e14
    assert "cpu" in b.peak_key() and "float32" in b.peak_key()


def test_unavailable_devices_are_clear_errors() -> None:
    from localtrain.errors import LocaltrainError

    if not torch.cuda.is_available():
        with pytest.raises(LocaltrainError, match="--device cuda: PyTorch .* sees no CUDA GPU"):
            TorchBackend("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(LocaltrainError, match="--device mps"):
            TorchBackend("mps")


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_cuda_training_matches_cpu_in_float32() -> None:
    cpu = backend(seed=1)
    gpu = TorchBackend("cuda", "float32")
    gpu.build(MODEL, VOCAB, 1)
    gpu.configure_optimizer(TrainConfig(lr=1e-2))
    for s in range(3):
        rc, rg = cpu.train_step([batch(s)], 1e-2), gpu.train_step([batch(s)], 1e-2)
        assert rc.loss == pytest.approx(rg.loss, rel=1e-4)


def test_a_compiled_training_step_matches_eager() -> None:
    eager = backend(seed=2)
    compiled = TorchBackend("cpu", compile=True)
    compiled.build(MODEL, VOCAB, 2)
    compiled.configure_optimizer(TrainConfig(lr=1e-2))
    assert compiled.train_model is not compiled.model
    for s in range(3):
        a, b = eager.train_step([batch(s)], 1e-2), compiled.train_step([batch(s)], 1e-2)
        assert a.loss == pytest.approx(b.loss, rel=1e-4)
    wa, _ = eager.state_arrays()
    wb, _ = compiled.state_arrays()
    # Fused kernels round differently; Adam turns that into at most a fraction of an
    # lr-sized step on near-zero gradients (see the accumulation test).
    assert max(np.abs(wa[k] - wb[k]).max() for k in wa) < 1e-3
