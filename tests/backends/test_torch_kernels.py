"""The pieces of the torch step that CUDA runs, checked on this CPU: the chunked loss, the attention choice."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from localtrain.backends import torch_attention
from localtrain.backends.base import loss_chunk_tokens
from localtrain.backends.torch_backend import TorchBackend
from localtrain.backends.torch_loss import chunked_cross_entropy, chunked_token_losses
from localtrain.config import ModelConfig, TrainConfig

MODEL = ModelConfig(n_layer=2, n_head=4, n_embd=32, seq_len=16, pad_vocab_multiple=8)
VOCAB = 37


def operands(dtype: torch.dtype, n: int = 50, d: int = 16, v: int = 37, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=dtype, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    return h, w, y


def plain(h, w, y, scale: float = 1.0):
    loss = F.cross_entropy((h @ w.T).float() if h.dtype != torch.float64 else h @ w.T, y)
    return (loss.detach(), *torch.autograd.grad(loss * scale, (h, w)))


@pytest.mark.parametrize("chunk", [7, 25, 50, 64])  # uneven, even, one whole chunk, more than the tokens
def test_chunked_loss_and_gradients_equal_the_plain_loss_in_float64(chunk: int) -> None:
    h, w, y = operands(torch.float64)
    loss, gh, gw = plain(h, w, y, scale=3.0)
    ours = chunked_cross_entropy(h, w, y, chunk)
    ch, cw = torch.autograd.grad(ours * 3.0, (h, w))  # the incoming gradient scales both
    assert abs(ours.item() - loss.item()) < 1e-12
    assert torch.allclose(ch, gh, rtol=0, atol=1e-14) and torch.allclose(cw, gw, rtol=0, atol=1e-14)


def test_chunked_loss_in_float32_matches_to_rounding_and_token_losses_too() -> None:
    h, w, y = operands(torch.float32, n=300, d=32, v=500, seed=1)
    loss, gh, gw = plain(h, w, y)
    ours = chunked_cross_entropy(h, w, y, 64)
    ch, cw = torch.autograd.grad(ours, (h, w))
    assert ours.item() == pytest.approx(loss.item(), rel=1e-6)
    assert (ch - gh).norm() / gh.norm() < 1e-5 and (cw - gw).norm() / gw.norm() < 1e-5
    per_token = chunked_token_losses(h, w, y, 64)
    assert torch.allclose(per_token, F.cross_entropy(h @ w.T, y, reduction="none"), atol=1e-5)


def test_chunked_loss_under_bfloat16_autocast_stays_within_bfloat16_rounding() -> None:
    h, w, y = operands(torch.float32, n=256, d=64, v=300, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, gh, gw = plain(h, w, y)
        ours = chunked_cross_entropy(h, w, y, 96)
    ch, cw = torch.autograd.grad(ours, (h, w))
    # Gradients come back in the parameters' dtype, as autocast's would.
    assert ours.dtype == ch.dtype == cw.dtype == torch.float32
    assert ours.item() == pytest.approx(loss.item(), rel=2e-3)
    assert (ch - gh).norm() / gh.norm() < 2e-2 and (cw - gw).norm() / gw.norm() < 2e-2


def test_the_compiled_chunked_loss_matches_the_plain_loss() -> None:
    # Under the compiler the logits' gradient takes its own (pointwise) path.
    h, w, y = operands(torch.float32, n=200, d=32, v=300, seed=3)
    loss, gh, gw = plain(h, w, y)
    compiled = torch.compile(chunked_cross_entropy, dynamic=False)
    ours = compiled(h, w, y, 64)
    ch, cw = torch.autograd.grad(ours, (h, w))
    assert ours.item() == pytest.approx(loss.item(), rel=1e-5)
    assert (ch - gh).norm() / gh.norm() < 1e-5 and (cw - gw).norm() / gw.norm() < 1e-5


def test_without_gradients_the_chunked_loss_is_the_mean_of_the_token_losses() -> None:
    h, w, y = operands(torch.float64)
    with torch.no_grad():
        loss = chunked_cross_entropy(h, w, y, 8)
    assert loss.item() == pytest.approx(F.cross_entropy(h @ w.T, y).item(), abs=1e-12)


def test_chunks_hold_about_2_to_the_29_logits_and_at_least_1024_tokens_on_cuda_alone() -> None:
    assert loss_chunk_tokens(50304, "cuda") == 8192  # 2^29 / 50304 = 10672.6, the power of two below
    assert loss_chunk_tokens(32000, "cuda") == 16384  # 16777.2
    assert loss_chunk_tokens(1 << 20, "cuda") == 1024  # 512 would be too few to amortize the weight gradient's sum
    assert loss_chunk_tokens(65, "cuda") == 1 << 22  # a char vocabulary: one chunk for any real micro-batch
    # Elsewhere the plain loss (0): the backend and the planner's memory model read the same answer.
    assert [loss_chunk_tokens(50304, d) for d in ("cpu", "mps", "mlx")] == [0, 0, 0]


def backend(chunk: int, seed: int = 2, compile: bool = False, **model) -> TorchBackend:
    b = TorchBackend("cpu", "float32", compile=compile)
    b.build(dataclasses.replace(MODEL, **model), VOCAB, seed)
    b.configure_optimizer(TrainConfig(lr=1e-2, grad_clip=0.5))
    b.model.loss_chunk = chunk
    return b


def batch(seed: int, rows: int = 4) -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(seed).integers(0, VOCAB, (rows, MODEL.seq_len + 1)).astype(np.uint16)
    return data[:, :-1], data[:, 1:]


def test_the_cpu_backend_keeps_the_plain_loss() -> None:
    # The CPU path's results and memory (which the planner was fitted to) stay as they were.
    b = TorchBackend("cpu", "float32")
    b.build(MODEL, VOCAB, 0)
    assert b.model.loss_chunk == 0


def test_training_with_the_chunked_loss_follows_the_plain_one() -> None:
    plain_b, chunked = backend(0), backend(24)  # 64 tokens a micro-batch: chunks of 24, 24, 16
    for s in range(4):
        micro = [batch(s, rows=2), batch(s + 10, rows=2)]  # accumulation: the loss is scaled by 1/2
        a, b = plain_b.train_step(micro, 1e-2), chunked.train_step(micro, 1e-2)
        assert b.loss == pytest.approx(a.loss, rel=1e-5) and b.grad_norm == pytest.approx(a.grad_norm, rel=1e-5)
    wa, ma = plain_b.state_arrays()
    wb, mb = chunked.state_arrays()
    assert max(np.abs(wa[k] - wb[k]).max() for k in wa) < 1e-4
    x, y = batch(9)
    assert np.allclose(plain_b.token_losses(x, y), chunked.token_losses(x, y), atol=1e-5)


def test_the_chunked_loss_compiles_into_one_graph() -> None:
    # A graph break would split the step at the loss and cost a launch gap on a GPU.
    b = backend(24)
    b.model.complex_rope = False  # as under torch.compile
    x, y = (torch.from_numpy(a.astype(np.int64)) for a in batch(1))
    explained = torch._dynamo.explain(b.model)(x, y)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_the_attention_choice_orders_the_kernels_that_ran_and_names_the_rest() -> None:
    choice = torch_attention.measure((2, 4, 64, 16), torch.float32, "cpu", repeats=1, rounds=2)
    # This CPU has torch's flash kernel; cuDNN's and the memory-efficient one are CUDA-only.
    assert choice.order == ["FLASH_ATTENTION"] and choice.ms["FLASH_ATTENTION"] > 0
    assert set(choice.refused) == {"CUDNN_ATTENTION", "EFFICIENT_ATTENTION"}
    q = torch.randn(2, 4, 64, 16)
    with choice.context():
        out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert torch.allclose(out, ref, atol=1e-5)



def test_the_attention_choice_is_kept_per_machine_and_shape(tmp_path, monkeypatch) -> None:
    measured: list[tuple[int, ...]] = []
    measure = torch_attention.measure
    monkeypatch.setattr(torch_attention, "measure",
                        lambda shape, *a, **k: measured.append(shape) or measure(shape, *a, **k))
    first, second, unkept = torch_attention.Choices(), torch_attention.Choices(), torch_attention.Choices()
    first.kept_in = second.kept_in = tmp_path
    shape = (4, 2, 32, 16)
    chosen = first.of(shape, "bfloat16", "cpu")
    # Another backend (a restart, a second run) takes the kept choice; another shape, or a
    # backend told of no directory, measures.
    assert second.of(shape, "bfloat16", "cpu") == chosen and measured == [shape]
    second.of((8, 2, 32, 16), "bfloat16", "cpu")
    unkept.of(shape, "bfloat16", "cpu")
    assert measured == [shape, (8, 2, 32, 16), shape]
    # A choice the backend holds already (a checkpoint's) wins over the kept one.
    resumed = torch_attention.Choices()
    resumed.kept_in = tmp_path
    resumed[(4, "bfloat16")] = torch_attention.AttentionChoice(order=["FLASH_ATTENTION"], upcast=not chosen.upcast)
    assert resumed.of(shape, "bfloat16", "cpu").upcast is not chosen.upcast
    # An unreadable file is measured over and written whole again.
    (tmp_path / torch_attention.KEPT_FILE).write_text("{not json")
    fresh = torch_attention.Choices()
    fresh.kept_in = tmp_path
    fresh.of(shape, "bfloat16", "cpu")
    assert len(measured) == 4 and len(json.loads((tmp_path / torch_attention.KEPT_FILE).read_text())) == 1


def live_peak(step) -> int:
    """The most bytes of CPU tensors allocated at once during step(), above those live before it
    (the profiler's allocation events: what torch.cuda.max_memory_allocated counts on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")):
        live += nbytes
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
def test_the_chunked_loss_holds_one_chunk_of_logits_at_the_bytes_the_planner_counts(mixed: bool,
                                                                                      compiled: bool) -> None:
    from localtrain.memory import CHUNK_LOGIT_BYTES

    n, d, v, chunk = 1024, 16, 8192, 512  # two chunks; the logits dwarf everything else
    h, w, y = (t.detach() for t in operands(torch.float32, n, d, v, seed=4))
    h.requires_grad_(), w.requires_grad_()
    loss_fn = torch.compile(chunked_cross_entropy, dynamic=False) if compiled else chunked_cross_entropy

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            loss = loss_fn(h, w, y, chunk)
        loss.backward()
        h.grad = w.grad = None

    step()  # compiles
    logits = CHUNK_LOGIT_BYTES[f"{'compiled' if compiled else 'eager'}_{'mixed' if mixed else 'fp32'}"] * chunk * v
    # Beside one chunk's logits: the head's weight and its gradients (float32 and 16-bit), the
    # hidden states' ones: at most 5 x 4 bytes a value of each.
    rest = 5 * 4 * (v * d + n * d)
    # A temporary of the chunk's size (torch.logsumexp's), or a second chunk kept, breaks the bound.
    assert logits <= live_peak(step) <= logits + rest


def test_a_16_bit_step_on_this_cpu_times_attention_in_float32_too_and_a_resumed_backend_keeps_the_choice(
        monkeypatch) -> None:
    """On a CPU torch's 16-bit attention can be several times slower than its float32 one: a
    bfloat16 step times both ways on its own shape, runs the faster, and the checkpoint keeps it."""

    def made() -> TorchBackend:
        b = TorchBackend("cpu", "bfloat16")
        b.build(MODEL, VOCAB, 0)
        b.configure_optimizer(TrainConfig())
        return b

    data = np.random.default_rng(0).integers(0, VOCAB, (4, MODEL.seq_len + 1))
    batch = [(data[:, :-1], data[:, 1:])]
    first = made()
    first.train_step(batch, 1e-3)
    ((key, choice),) = first.attention.items()
    assert key == (4, "bfloat16") and {"FLASH_ATTENTION", "FLASH_ATTENTION/float32"} <= set(choice.ms)
    assert choice.upcast == (min(choice.ms, key=choice.ms.get) == "FLASH_ATTENTION/float32")
    assert [layer.self_attn.upcast for layer in first.model.model.layers] == [choice.upcast] * MODEL.n_layer
    # Each way is what the step then runs: the attention kernel's inputs in float32, or in bfloat16.
    seen: list[torch.dtype] = []
    real = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return real(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    for upcast in (True, False):
        first.attention[key], seen[:] = dataclasses.replace(choice, upcast=upcast), []
        first.train_step(batch, 1e-3)
        assert set(seen) == {torch.float32 if upcast else torch.bfloat16} and len(seen) == MODEL.n_layer
    monkeypatch.undo()
    first.attention[key] = choice
    resumed = made()
    resumed.set_extra_state(json.loads(json.dumps(first.extra_state())))
    resumed.train_step(batch, 1e-3)
    assert resumed.attention == first.attention  # taken from the checkpoint, not timed again
    assert [layer.self_attn.upcast for layer in resumed.model.model.layers] == [choice.upcast] * MODEL.n_layer


def test_a_compiled_step_with_float32_attention_is_kept_in_the_compilers_step_cache() -> None:
    """Attention in float32 turns autocast off around itself; the compiled step must still be one
    the compiler's step cache keeps, or every new process traces and optimises it again."""
    from torch._dynamo.utils import counters

    data = np.random.default_rng(3).integers(0, VOCAB, (4, MODEL.seq_len + 1))
    batch = [(data[:, :-1], data[:, 1:])]
    losses = []
    for compiled in (False, True):
        b = TorchBackend("cpu", "bfloat16", compile=compiled)
        b.build(MODEL, VOCAB, 0)
        b.configure_optimizer(TrainConfig())
        b.attention[(4, "bfloat16")] = torch_attention.AttentionChoice(order=["FLASH_ATTENTION"], upcast=True)
        counters.clear()
        losses.append([b.train_step(batch, 1e-3).loss for _ in range(2)])
    aot = counters["aot_autograd"]
    assert aot["autograd_cache_bypass"] == 0 and aot["autograd_cache_saved"] + aot["autograd_cache_hit"] == 1, aot
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
