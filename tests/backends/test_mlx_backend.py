"""The MLX backend against the torch backend on the same state, and what only MLX has (bfloat16
compute over float32 master weights, its allocator's peak). What every backend must do is in
test_conformance.py."""

from __future__ import annotations


import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="needs MLX (pip install 'mlx[cpu]' on Linux)")

from localtrain.backends.mlx_backend import MLXBackend  # noqa: E402
from localtrain.backends.torch_backend import TorchBackend  # noqa: E402
from localtrain.config import ModelConfig, TrainConfig  # noqa: E402
from localtrain.errors import CheckpointError, LocaltrainError  # noqa: E402

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


def test_a_refused_checkpoint_leaves_the_model_as_it_was() -> None:
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


def test_peak_memory_holds_the_weights_moments_and_gradients() -> None:
    m = mlx()
    m.train_step([batch(0)], 1e-2)
    # At least the weights, both moments and the gradients were held during the step.
    assert m.memory_bytes() >= 4 * 4 * m.num_params()
