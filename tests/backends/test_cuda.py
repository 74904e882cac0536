"""The torch step on an NVIDIA GPU: compiled against eager, the chunked loss, the attention kernels, memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from localtrain import memory, sampling
from localtrain.backends import torch_attention
from localtrain.backends.torch_backend import TorchBackend
from localtrain.backends.torch_loss import chunked_cross_entropy
from localtrain.config import ModelConfig, TrainConfig

pytestmark = [
    pytest.mark.requires_cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA"),
]

MODEL = ModelConfig(n_layer=2, n_head=4, n_embd=128, seq_len=128)
VOCAB = 1000


def backend(compile: bool = False, model: ModelConfig = MODEL, vocab: int = VOCAB, seed: int = 1) -> TorchBackend:
    b = TorchBackend("cuda", "bfloat16", 0, compile)
    b.build(model, vocab, seed)
    b.configure_optimizer(TrainConfig(lr=3e-3))
    return b


def batch(seed: int, rows: int, model: ModelConfig = MODEL, vocab: int = VOCAB) -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(seed).integers(0, vocab, (rows, model.seq_len + 1)).astype(np.uint16)
    return data[:, :-1], data[:, 1:]


def test_a_compiled_bfloat16_run_follows_eager() -> None:
    eager, compiled = backend(False), backend(True)
    eager.model.loss_chunk = compiled.model.loss_chunk = 1024  # 4,096 tokens: four chunks
    losses = []
    for s in range(8):
        data = [batch(s % 2, 32)]  # two batches in turn: the loss falls as they are learned
        a, b = eager.train_step(data, 3e-3), compiled.train_step(data, 3e-3)
        losses.append((a.loss, b.loss))
        # bf16 rounds to 3 significant digits; kernels fused differently round differently.
        assert b.loss == pytest.approx(a.loss, rel=2e-2), losses
        assert b.grad_norm == pytest.approx(a.grad_norm, rel=5e-2)
    assert losses[-1][1] < losses[0][1] - 0.1
    # The step ran the kernel the measurement chose, on the step's own shape.
    assert compiled.attention[(32, "bfloat16")].order


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_chunked_loss_and_its_gradients_match_the_plain_path(dtype: torch.dtype) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(3000, 256, device="cuda", generator=g, requires_grad=True)
    w = (torch.randn(50304, 256, device="cuda", generator=g) * 0.05).requires_grad_()
    y = torch.randint(0, 50257, (3000,), device="cuda", generator=g)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        plain = F.cross_entropy(F.linear(h, w).float(), y)
        ours = chunked_cross_entropy(h, w, y, 1024)  # chunks of 1024, 1024, 952
    gh, gw = torch.autograd.grad(plain, (h, w))
    ch, cw = torch.autograd.grad(ours, (h, w))
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-3  # float32 matmuls run as TF32 here
    assert ours.item() == pytest.approx(plain.item(), rel=tol / 10)
    assert float((ch - gh).norm() / gh.norm()) < tol and float((cw - gw).norm() / gw.norm()) < tol


def test_every_fused_attention_kernel_that_runs_agrees_with_float32_arithmetic() -> None:
    shape = (2, 12, 1024, 64)
    choice = torch_attention.measure(shape, torch.bfloat16, "cuda")
    assert choice.order, choice.refused
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(2, 1024, 12, 64, device="cuda", generator=g).transpose(1, 2) for _ in range(3))
    grad = torch.randn(q.shape, device="cuda", generator=g)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        F.scaled_dot_product_attention(*ref_in, is_causal=True).backward(grad)
    for name in choice.order:
        ins = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
        with torch.nn.attention.sdpa_kernel([getattr(torch.nn.attention.SDPBackend, name)]):
            out = F.scaled_dot_product_attention(*ins, is_causal=True)
            out.backward(grad.to(torch.bfloat16))
        for got, want in zip(ins, ref_in):
            err = float((got.grad.float() - want.grad).norm() / want.grad.norm())
            assert err < 2e-2, (name, err)


def test_eval_and_generation_run_beside_the_compiled_step() -> None:
    b = backend(True, dataclasses.replace(MODEL, n_kv_head=2))
    x, y = batch(3, 8)
    first = b.train_step([(x, y)], 3e-3).loss
    losses = b.token_losses(x, y)
    assert losses.shape == y.shape and abs(float(losses.mean()) - first) < 0.5
    assert len(sampling.generate(b, [1, 2, 3], 20, 1.0, 10, seed=0)) == 20


# Deep and wide enough that activations, not the fixed terms, make most of the peak.
SHAPE = ModelConfig(n_layer=4, n_head=12, n_embd=768, seq_len=1024)


@pytest.mark.parametrize("compiled", [False, True])
def test_the_planners_predicted_peak_is_within_10_percent_at_three_micro_batches(compiled: bool) -> None:
    b = backend(compiled, SHAPE, vocab=8192)
    errors = {}
    for micro in (16, 32, 48):
        data = batch(micro, micro, SHAPE, 8192)
        for _ in range(2):  # the first step makes the optimizer's moments
            b.train_step([data], 1e-3)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        b.train_step([data], 1e-3)
        measured = torch.cuda.max_memory_allocated()
        est = memory.memory_estimate(SHAPE, 8192, micro, "bfloat16", "cuda", compiled=compiled)
        errors[micro] = est.tensors / measured - 1
    assert all(abs(e) <= 0.10 for e in errors.values()), errors
