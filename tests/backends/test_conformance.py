"""What every backend must do, checked the same way for each: a new backend joins FACTORIES and
passes this file. Figures are compared against a float64 reference or against the backend
itself under another setting, never against another backend's output; tests that only one
backend can answer (its internals, its devices) stay in that backend's own file."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from typing import Any, Callable

import numpy as np
import pytest

import llama_reference
from localtrain.backends import backend_class
from localtrain.backends.base import Backend
from localtrain.config import ModelConfig, TrainConfig
from localtrain.errors import CheckpointError
from localtrain.sampling import generate, sample_token

MODEL = ModelConfig(n_layer=2, n_head=4, n_embd=32, seq_len=16, pad_vocab_multiple=8)
VOCAB = 37
ROWS = 40  # 37 padded up to a multiple of 8


@dataclasses.dataclass(frozen=True)
class Factory:
    """A backend of the registry on the CPU, and what the test needs beside the protocol."""

    name: str
    logits: Callable[[Any, np.ndarray], np.ndarray]
    """The backend's own float32 logits over the real vocabulary, (B, T) -> (B, T, VOCAB)."""
    products: Callable[[int], Callable[[int], None]]
    """n -> a function that computes k float32 n x n products with the framework directly and
    waits for them (the test's own timing of what the backend's peak measures)."""
    peak_sizes: tuple[int, ...]
    """The matrix sizes the backend's peak is measured over on this device."""

    def make(self, model: ModelConfig = MODEL, seed: int = 0, compile: bool | None = None, **train) -> Backend:
        """Built with float32 weights and an AdamW at lr 1e-2; compiled as the backend's default unless told."""
        cls = backend_class(self.name)
        b = cls("cpu", "float32", 0) if compile is None else cls("cpu", "float32", 0, compile)
        b.build(model, VOCAB, seed)
        b.configure_optimizer(TrainConfig(**{"lr": 1e-2, **train}))
        return b


def _torch() -> Factory:
    import torch

    def logits(b, x: np.ndarray) -> np.ndarray:
        b.model.eval()
        with torch.no_grad():
            z = b.model.logits(b.model.hidden(torch.from_numpy(x.astype(np.int64))))
        return z[..., :VOCAB].float().numpy()

    def products(n: int) -> Callable[[int], None]:
        gen = torch.Generator().manual_seed(1)  # the default generator is the run's dropout state
        a, c = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)

        def run(k: int) -> None:
            for _ in range(k):
                torch.mm(a, c)
        return run

    return Factory("torch", logits, products, (512, 1024, 2048))


def _mlx() -> Factory:
    import mlx.core as mx

    def products(n: int) -> Callable[[int], None]:
        ka, kc = mx.random.split(mx.random.key(1))
        a, c = mx.random.normal((n, n), key=ka), mx.random.normal((n, n), key=kc)
        mx.eval(a, c)

        def run(k: int) -> None:
            for _ in range(k):
                mx.eval(mx.matmul(a, c))
        return run

    return Factory("mlx", lambda b, x: b.logits(x), products, (256, 512, 1024))


def _mlx_installed() -> bool:
    try:
        return importlib.util.find_spec("mlx.core") is not None
    except ModuleNotFoundError:
        return False


FACTORIES = {"torch": _torch, "mlx": _mlx}


@pytest.fixture(scope="module", params=[
    "torch",
    pytest.param("mlx", marks=pytest.mark.skipif(not _mlx_installed(), reason="needs MLX (pip install 'mlx[cpu]')")),
])
def backend(request) -> Factory:
    return FACTORIES[request.param]()


def batch(seed: int, rows: int = 4, seq_len: int = 16) -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(seed).integers(0, VOCAB, (rows, seq_len + 1)).astype(np.uint16)
    return data[:, :-1], data[:, 1:]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def decayed_names(cfg: ModelConfig) -> set[str]:
    """The matrices AdamW decays: every projection; not the norms, not the tied embedding."""
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    return {f"model.layers.{i}.{n}.weight" for i in range(cfg.n_layer) for n in names}


# -- the model --------------------------------------------------------------------------------


def test_the_shared_names_and_shapes_are_the_llama_layout(backend: Factory) -> None:
    cfg = dataclasses.replace(MODEL, n_kv_head=2)
    b = backend.make(cfg)
    weights, moments = b.state_arrays()
    assert moments == {}  # no optimizer step yet
    d, ffn = cfg.n_embd, cfg.ffn_size
    want = {"model.embed_tokens.weight": (ROWS, d), "model.norm.weight": (d,)}
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        want |= {p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (16, d),  # 2 kv heads of 8
                 p + "self_attn.v_proj.weight": (16, d), p + "self_attn.o_proj.weight": (d, d),
                 p + "mlp.gate_proj.weight": (ffn, d), p + "mlp.up_proj.weight": (ffn, d),
                 p + "mlp.down_proj.weight": (d, ffn),
                 p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
    assert {k: v.shape for k, v in weights.items()} == want  # tied: no lm_head.weight
    assert all(v.dtype == np.float32 for v in weights.values())
    assert b.num_params() == sum(v.size for v in weights.values())
    # Initialisation follows one recipe: norms 1, residual outputs narrower.
    assert all(np.all(weights[k] == 1.0) for k in want if len(want[k]) == 1)
    assert weights["model.layers.0.mlp.down_proj.weight"].std() < weights["model.layers.0.mlp.up_proj.weight"].std()


@pytest.mark.parametrize("kv_heads", [0, 2])
def test_logits_match_a_float64_reference_on_the_shared_tensors(backend: Factory, kv_heads: int) -> None:
    cfg = dataclasses.replace(MODEL, n_kv_head=kv_heads, seq_len=64)
    b = backend.make(cfg, seed=3)
    weights, _ = b.state_arrays()
    x, _ = batch(1, rows=3, seq_len=64)
    ours = backend.logits(b, x)
    assert ours.shape == (3, 64, VOCAB)
    ref = llama_reference.logits(weights, cfg, x)[..., :VOCAB].numpy()
    assert np.abs(ours - ref).max() < 1e-5


def test_token_losses_match_a_float64_reference(backend: Factory) -> None:
    b = backend.make(seed=3)
    for s in range(3):
        b.train_step([batch(s)], 1e-2)
    weights, _ = b.state_arrays()
    x, y = batch(6)
    losses = b.token_losses(x, y)
    assert losses.shape == y.shape
    # The loss normalises over every embedding row, the padded ones included.
    assert np.abs(losses - llama_reference.token_nats(weights, MODEL, x, y)).max() < 1e-5


def test_attention_is_causal(backend: Factory) -> None:
    b = backend.make()
    x, _ = batch(2)
    changed = x.copy()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
    full, after = backend.logits(b, x), backend.logits(b, changed)
    assert np.array_equal(full[:, :10], after[:, :10])
    assert not np.allclose(full[:, 10:], after[:, 10:])


# -- training ---------------------------------------------------------------------------------


def test_the_step_loss_is_the_mean_token_loss_before_the_update(backend: Factory) -> None:
    b = backend.make(seed=1)
    x, y = batch(6)
    expected = float(b.token_losses(x, y).astype(np.float64).mean())
    assert b.train_step([(x, y)], 1e-2).loss == pytest.approx(expected, rel=1e-6)
    assert float(b.token_losses(x, y).mean()) < expected  # the update moved the weights downhill


def test_training_lowers_the_loss(backend: Factory) -> None:
    b = backend.make()
    x, y = batch(6)
    first = b.train_step([(x, y)], 1e-2).loss
    for _ in range(30):
        last = b.train_step([(x, y)], 1e-2).loss
    assert last < first * 0.5


def test_gradient_accumulation_equals_one_big_batch(backend: Factory) -> None:
    x, y = batch(5, rows=8)
    one, two = backend.make(seed=2), backend.make(seed=2)
    r1 = one.train_step([(x, y)], 1e-2)
    r2 = two.train_step([(x[:4], y[:4]), (x[4:], y[4:])], 1e-2)
    assert r1.loss == pytest.approx(r2.loss, abs=1e-6)
    assert r1.grad_norm == pytest.approx(r2.grad_norm, rel=1e-5)
    w1, m1 = one.state_arrays()
    w2, m2 = two.state_arrays()
    # Adam's first update is about lr x sign(gradient), so float rounding in the two sums
    # shows up only on near-zero gradients; 1% of one lr step bounds it.
    assert max(np.abs(w1[k] - w2[k]).max() for k in w1) < 1e-4
    # The moments hold the mean gradient, not the sum over micro-batches.
    assert max(rel(m1[k], m2[k]) for k in m1 if k.endswith(".exp_avg")) < 1e-4


def test_weight_decay_is_decoupled_and_spares_norms_and_the_embedding(backend: Factory) -> None:
    lr, wd = 1e-2, 0.5
    plain, decayed = backend.make(seed=4, weight_decay=0.0), backend.make(seed=4, weight_decay=wd)
    before, _ = plain.state_arrays()
    x, y = batch(3)
    plain.train_step([(x, y)], lr)
    decayed.train_step([(x, y)], lr)
    wp, _ = plain.state_arrays()
    wd_, _ = decayed.state_arrays()
    shrunk = decayed_names(MODEL)
    # AdamW: p <- p (1 - lr wd) - lr adam(g); the same gradients, so the two runs differ by
    # exactly lr wd p on the decayed matrices (~1e-4 here) and not at all elsewhere.
    for k in before:
        if k in shrunk:
            assert np.abs((wd_[k] - wp[k]) - (-lr * wd * before[k])).max() < 1e-7, k
        else:
            assert np.array_equal(wd_[k], wp[k]), k


def test_clipping_scales_the_gradient_and_reports_the_norm_before_it(backend: Factory) -> None:
    free, clipped = backend.make(seed=5, grad_clip=0.0), backend.make(seed=5, grad_clip=0.01)
    weights, _ = free.state_arrays()
    x, y = batch(4)
    norm = llama_reference.grad_norm(weights, MODEL, x, y)
    rf, rc = free.train_step([(x, y)], 1e-2), clipped.train_step([(x, y)], 1e-2)
    assert norm > 0.01
    assert rf.grad_norm == pytest.approx(norm, rel=1e-4)
    assert rc.grad_norm == pytest.approx(norm, rel=1e-4)
    # The first moment holds (1 - beta1) x the gradient actually applied: scaled by 0.01 / norm.
    _, mf = free.state_arrays()
    _, mc = clipped.state_arrays()
    for k in mf:
        if k.endswith(".exp_avg") and np.abs(mf[k]).max() > 0:
            assert np.allclose(mc[k], mf[k] * (0.01 / rf.grad_norm), rtol=1e-3, atol=1e-9), k


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_a_compiled_training_step_matches_eager(backend: Factory, weight_decay: float) -> None:
    """Separately with and without decay: lr x decay x weight is ~1e-4 of a weight a step,
    which a bound loose enough for the fused kernels' rounding on its own would not see."""
    eager = backend.make(seed=2, compile=False, weight_decay=weight_decay)
    compiled = backend.make(seed=2, compile=True, weight_decay=weight_decay)
    for s in range(3):
        a, b = eager.train_step([batch(s)], 1e-2), compiled.train_step([batch(s)], 1e-2)
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
    wa, _ = eager.state_arrays()
    wb, _ = compiled.state_arrays()
    # Fused kernels round differently (measured: under 1e-5 of a tensor's norm); a dropped
    # decay moves a matrix by ~3e-3 of its norm in three steps at this rate.
    worst = max(rel(wa[k], wb[k]) for k in wa)
    assert worst < 1e-4, worst


def test_activation_checkpointing_changes_nothing_but_memory(backend: Factory) -> None:
    cfg = dataclasses.replace(MODEL, dropout=0.1)
    runs = []
    for on in (False, True):
        # One after the other: a backend may draw dropout from a process-wide generator
        # that building it seeds.
        b = backend.make(cfg, seed=2)
        b.set_activation_checkpointing(on)
        runs.append([b.train_step([batch(s)], 1e-2) for s in range(2)])
    for plain, recomputed in zip(*runs):
        assert recomputed.loss == pytest.approx(plain.loss, rel=1e-5)
        assert recomputed.grad_norm == pytest.approx(plain.grad_norm, rel=1e-4)


# -- state ------------------------------------------------------------------------------------


def test_state_round_trips_exactly_and_the_next_step_is_identical(backend: Factory) -> None:
    a = backend.make(seed=1)
    for s in range(3):
        a.train_step([batch(s)], 1e-2)
    weights, moments = a.state_arrays()
    assert set(moments) == {f"{k}.{m}" for k in weights for m in ("exp_avg", "exp_avg_sq")}
    b = backend.make(seed=99)
    b.load_state_arrays(weights, moments, opt_step=3)
    w2, m2 = b.state_arrays()
    assert all(np.array_equal(weights[k], w2[k]) for k in weights)
    assert all(np.array_equal(moments[k], m2[k]) for k in moments)
    # The moments and the step count (Adam's bias correction) carried over.
    ra, rb = a.train_step([batch(7)], 1e-2), b.train_step([batch(7)], 1e-2)
    assert ra.loss == rb.loss and ra.grad_norm == rb.grad_norm
    wa, _ = a.state_arrays()
    wb, _ = b.state_arrays()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_a_checkpoint_of_another_shape_is_refused_with_names_and_shapes(backend: Factory) -> None:
    weights, _ = backend.make().state_arrays()
    wider = backend.make(dataclasses.replace(MODEL, n_embd=64))
    with pytest.raises(CheckpointError) as err:
        wider.load_state_arrays(weights, None, 0)
    assert "model.embed_tokens.weight has shape (40, 32), the model needs (40, 64)" in str(err.value)
    assert "different model shape or vocabulary" in str(err.value)

    partial = dict(weights)
    del partial["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing \(model\.layers\.1\.mlp\.up_proj\.weight \(96, 32\)\)"):
        backend.make().load_state_arrays(partial, None, 0)

    trained = backend.make()
    trained.train_step([batch(0)], 1e-2)
    weights, moments = trained.state_arrays()
    del moments["model.norm.weight.exp_avg_sq"]
    with pytest.raises(CheckpointError, match="lacks `model.norm.weight.exp_avg_sq`"):
        backend.make().load_state_arrays(weights, moments, 1)


def test_rng_state_restores_dropout_exactly(backend: Factory) -> None:
    b = backend.make(dataclasses.replace(MODEL, dropout=0.2), seed=5, lr=0.0)
    state = b.rng_state()
    assert json.loads(json.dumps(state)) == state
    weights, _ = b.state_arrays()
    x, y = batch(1)
    # lr 0: the weights stay put, so different losses mean different dropout masks.
    losses = [b.train_step([(x, y)], 0.0).loss for _ in range(3)]
    assert len(set(losses)) == 3
    b.load_state_arrays(weights, None, 0)
    b.set_rng_state(state)
    assert [b.train_step([(x, y)], 0.0).loss for _ in range(3)] == losses


# -- generation -------------------------------------------------------------------------------


def test_generation_with_the_kv_cache_equals_full_recomputation(backend: Factory) -> None:
    b = backend.make(seed=4)
    for s in range(5):
        b.train_step([batch(s)], 1e-2)
    prompt = [3, 1, 4, 1, 5]
    # top_k=1 is greedy: compare with argmax over a full forward pass at every step,
    # running past the context length (16) so the window restart is covered too.
    out = generate(b, prompt, 30, temperature=1.0, top_k=1, seed=0)
    seq, window_start = list(prompt), 0
    for _ in range(30):
        ctx = seq[window_start:]
        if len(ctx) > MODEL.seq_len:
            window_start = len(seq) - MODEL.seq_len // 2
            ctx = seq[window_start:]
        seq.append(int(backend.logits(b, np.array([ctx]))[0, -1].argmax()))
    assert out == seq[len(prompt):]
    # A nucleus too small for a second token is greedy too.
    assert generate(b, prompt, 30, temperature=1.0, top_k=0, seed=3, top_p=1e-6) == out


def test_a_decoder_computes_in_the_dtype_asked_for(backend: Factory) -> None:
    # A 16-bit run's live samples decode in float32 where the tuner timed that faster: the scores
    # are then those of a float32 backend holding the same weights, not the 16-bit ones.
    f32 = backend.make(seed=4)
    weights, _ = f32.state_arrays()
    b16 = backend_class(backend.name)("cpu", "bfloat16", 0, False)
    b16.build(MODEL, VOCAB, 0)
    b16.load_state_arrays(weights, None, 0)
    prompt = [3, 1, 4, 1, 5]
    want = f32.decoder().start(prompt)
    np.testing.assert_allclose(b16.decoder("float32").start(prompt), want, rtol=0, atol=1e-5)
    assert np.abs(b16.decoder().start(prompt) - want).max() > 1e-4  # its own dtype really is another


def test_generation_ends_before_the_stop_token(backend: Factory) -> None:
    # The end of a document ends a sample: the same draws as without a stop, cut before it.
    b = backend.make(seed=4)
    full = generate(b, [1, 2], 40, 1.5, 0, seed=5)
    stop = full[len(full) // 2]
    assert generate(b, [1, 2], 40, 1.5, 0, seed=5, stop_id=stop) == full[: full.index(stop)]


def test_sampling_is_seeded_and_leaves_the_training_rng_alone(backend: Factory) -> None:
    b = backend.make(dataclasses.replace(MODEL, dropout=0.1))
    state = b.rng_state()
    a1 = generate(b, [1, 2], 20, 1.0, 0, seed=7)
    a2 = generate(b, [1, 2], 20, 1.0, 0, seed=7)
    a3 = generate(b, [1, 2], 20, 1.0, 0, seed=8)
    assert a1 == a2 and a1 != a3
    assert all(0 <= t < VOCAB for t in a1)  # padded rows are never sampled
    assert b.rng_state() == state


def test_seeded_sampling_draws_what_the_float64_reference_scores_give(backend: Factory) -> None:
    # Sampling lives in core: a backend only scores. From the same weights and seed every
    # backend must draw the tokens the reference model's scores give, at a temperature
    # where the draw really is random, through the window restart (seq_len 16).
    b = backend.make(seed=6)
    weights, _ = b.state_arrays()
    prompt = [5, 3, 5]
    ours = generate(b, prompt, 24, temperature=1.5, top_k=0, seed=11, top_p=0.95)
    rng, seq, start = np.random.default_rng(11), list(prompt), 0
    for _ in range(24):
        if len(seq) - start > MODEL.seq_len:
            start = len(seq) - MODEL.seq_len // 2
        scores = llama_reference.logits(weights, MODEL, np.array([seq[start:]]))[0, -1, :VOCAB].numpy()
        seq.append(sample_token(scores, 1.5, 0, 0.95, rng))
    assert ours == seq[len(prompt):]
    assert len(set(ours)) > 5  # a random draw, not a greedy one


# -- speed ------------------------------------------------------------------------------------


def timed_rate(backend: Factory, seconds: float = 0.25) -> float:
    """The best n x n product rate over the backend's sizes, timed here: each size runs back to
    back for about `seconds`, as long as the backend's own measurement runs it."""
    best = 0.0
    for n in backend.peak_sizes:
        run = backend.products(n)
        run(1)  # warm-up
        start = time.perf_counter()
        run(1)
        k = max(2, int(seconds / (time.perf_counter() - start)))
        start = time.perf_counter()
        run(k)
        best = max(best, 2 * n**3 * k / (time.perf_counter() - start))
    return best


def test_the_peak_matmul_rate_agrees_with_products_timed_here(backend: Factory) -> None:
    """MFU divides by this peak: a factor of two in its FLOP count or its timing is a factor of
    two in every MFU figure. The same products timed here must give a rate within 1.5x of it
    either way; other load on the machine moves both readings, so a reading outside the bound
    is taken again (three tries in all) before it counts as a failure."""
    b = backend.make()
    before = b.rng_state()
    readings = []
    for _ in range(3):
        peak = b.measure_peak_flops()
        readings.append(peak / timed_rate(backend))
        if 1 / 1.5 < readings[-1] < 1.5:
            break
    assert 1 / 1.5 < readings[-1] < 1.5, f"measured peak / rate timed here, per try: {readings}"
    assert b.rng_state() == before  # measuring never moves the dropout generator
    assert b.name in b.peak_key() and "float32" in b.peak_key()


def test_the_peak_counts_two_n_cubed_flops_a_product_over_the_time_taken() -> None:
    """The shared measurement on a stand-in product that takes exactly 5 ms whatever n is (a
    busy wait on the clock, so machine load cannot change it): the best rate is that of the
    largest size, 2 x 96^3 FLOP in 5 ms."""
    from localtrain.backends.base import matmul_peak

    seconds = 0.005

    def run(a: None, b: None, k: int) -> None:
        end = time.perf_counter() + k * seconds
        while time.perf_counter() < end:
            pass

    peak = matmul_peak((64, 96), lambda n: (None, None), run)
    assert peak == pytest.approx(2 * 96**3 / seconds, rel=0.05)
