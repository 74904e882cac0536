"""What only the torch backend has: its two rope paths and its devices. What every backend
must do is in test_conformance.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from localtrain.backends.torch_backend import TorchBackend
from localtrain.backends.torch_model import apply_rope
from localtrain.config import ModelConfig, TrainConfig
from localtrain.errors import LocaltrainError

MODEL = ModelConfig(n_layer=2, n_head=4, n_embd=32, seq_len=16, pad_vocab_multiple=8)
VOCAB = 37


def backend(model: ModelConfig = MODEL, seed: int = 0, **train) -> TorchBackend:
    b = TorchBackend("cpu", "float32")
    b.build(model, VOCAB, seed)
    b.configure_optimizer(TrainConfig(**{"lr": 1e-2, **train}))
    return b


def batch(seed: int, rows: int = 4, seq_len: int = 16) -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(seed).integers(0, VOCAB, (rows, seq_len + 1)).astype(np.uint16)
    return data[:, :-1], data[:, 1:]


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


def test_unavailable_devices_are_clear_errors() -> None:
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
