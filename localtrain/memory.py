"""The memory model: the predicted peak of one training step, as named terms.

Weights, their 16-bit casts, gradients, AdamW moments, activations, the output head's
logits, the compiler and the backend's own overhead: `doctor` shows the breakdown, the
planner decides which candidates fit before any is timed, and the tuner's measured peak
replaces the prediction for the candidate it picks.
"""

from __future__ import annotations

from dataclasses import dataclass

from localtrain.backends.base import loss_chunk_tokens
from localtrain.config import ModelConfig
from localtrain.metrics import params_count
from localtrain.sharding import GB, sharded_terms

MB = 1024**2

# The coefficients below are effective values fitted to 45 peaks measured the way the tuner
# measures them (the resident high-water mark of a probe process over its optimizer steps; 6
# shapes x fp32/bf16 x eager/compiled x two micro-batches; torch 2.13 on an Intel Xeon with AMX;
# largest error 9.2%, see scripts/bench_planner.py). Another CPU may hold a little more or less:
# the tuner's measured peak replaces the prediction for the candidate it picks, and a
# candidate whose measured peak exceeds the budget is never picked.
#
# Per token and layer, the block saves about 11 d + 4 f values for its backward (norm
# inputs and outputs, q/k/v before and after rope, attention output, the MLP's gate,
# up, SiLU and product); measured eager peaks carry 1.4x that (allocator slack, transients).
# CUDA's caching allocator counts the tensors themselves (max_memory_allocated): there an
# eager step holds 0.95x, with 3 of the EMBED_VALUES below (fitted to eager bf16 peaks on
# an NVIDIA H100 and an H200, torch 2.11: 4 and 12 layers of 768, context 1024,
# vocabularies 8192 and 50257, micro-batches 12 to 240; all 18 within -0.5% and +4.5%, and
# float32 at micro-batches 32 and 96 within 1%; scripts/bench_planner.py --device cuda).
LAYER_FACTOR = {"cpu": 1.4, "cuda": 0.95}
# A compiled step fuses the norms, rope and SwiGLU and saves fewer intermediates: half of
# the eager activations on a CPU (gpt2-124m); on CUDA inductor keeps more of them for its
# fused backward, 0.664 of eager's (fitted with COMPILED_CHUNKED_LOGIT_BYTES on an H200,
# checked on an H100: gpt2-124m at micro-batches 12, 32, 120 within 4%).
COMPILED_LAYER_SHARE = {"cpu": 0.5, "cuda": 0.664}
# The logits, their log-softmax and their gradient: 2.8 fp32 copies of a vocab row per token.
LOGITS_COPIES_FP32 = 2.8
# Under autocast the logits are also held in 16 bits beside the fp32 loss: 14 bytes a logit.
LOGITS_BYTES_MIXED = 14.0
# Compiled, the loss is fused into the logits' own buffers: one fp32 copy, or 1.3 bytes a
# logit under autocast.
LOGITS_COPIES_COMPILED_FP32 = 1.0
LOGITS_BYTES_COMPILED_MIXED = 1.3
# Embedding output, final norm input/output and the loss's row buffers, per token, as a CPU
# process's resident peak and a compiled CUDA step hold them; an eager CUDA step's tensors
# hold 3 (the fit of LAYER_FACTOR above).
EMBED_VALUES = 12
EMBED_VALUES_CUDA_EAGER = 3
# Where the loss runs a chunk of tokens at a time (backends/torch_loss.py, on CUDA), one
# chunk's logits exist at once. Eager, bytes a logit: the float32 logits beside their
# gradient in the compute dtype, which overwrites them in float32 (6 under autocast, 4 in
# float32). Compiled, the gradient takes over the logits' own buffer: the compute dtype's
# bytes. Measured as the tensor bytes live over the loss on this CPU, the compiled ones
# with the CPU's code generator (tests/backends/test_torch_kernels.py holds them).
# (The compiled entries are what the chunked loss compiled on its own holds; inside a whole
# compiled step on CUDA the compiler keeps more: COMPILED_CHUNKED_LOGIT_BYTES.)
CHUNK_LOGIT_BYTES = {"eager_mixed": 6, "eager_fp32": 4, "compiled_mixed": 2, "compiled_fp32": 4}
# Compiled on CUDA, the compiler traces the chunked loss as one graph and keeps the logits
# of every token, not one chunk's: 3.4 bytes a logit, fitted with COMPILED_LAYER_SHARE to
# max_memory_allocated on an NVIDIA H200 in bf16 (4 x 768 layers, vocab 8192, micro-batches
# 16/32/48, and gpt2-124m at 32 and 240: every point within 1.5%). float32 is not measured
# there: twice the bytes is assumed.
COMPILED_CHUNKED_LOGIT_BYTES = {"mixed": 3.4, "fp32": 6.8}
# Memory a backend holds before the model: the interpreter and libraries (CPU RSS), a
# CUDA context outside the caching allocator, Metal/MLX runtime buffers.
OVERHEAD = {"cpu": 300 * MB, "cuda": 600 * MB, "mps": 500 * MB, "mlx": 200 * MB}
# What the compiler itself keeps in the training process (traced graphs, generated code).
COMPILER = {"cpu": 110 * MB, "cuda": 250 * MB}
# Share of the budget kept free, for fragmentation and what the model does not count.
SAFETY_MARGIN = 0.10


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak bytes of one training step, by named term."""

    terms: dict[str, int]
    per_sample: int
    """Bytes each extra sequence in the micro-batch adds (activations and logits)."""

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def tensors(self) -> int:
        """The terms a framework's allocator counts (torch.cuda.max_memory_allocated): all but the
        backend's own overhead and the compiler's generated code."""
        return self.total - self.terms["overhead"] - self.terms["compiler"]

    def measured_as(self, device: str) -> int:
        """The part of the prediction a backend's measured peak counts on `device`: on CUDA the
        allocator's tensors (max_memory_allocated), elsewhere the process's whole (its resident peak)."""
        return self.tensors if device == "cuda" else self.total


def memory_estimate(
    model: ModelConfig,
    vocab_size: int,
    micro_batch_size: int,
    dtype: str,
    device: str,
    checkpointing: bool = False,
    fused_attention: bool = True,
    compiled: bool = False,
    parallel: str = "none",
    world_size: int = 1,
    accumulate_unsharded: bool = False,
) -> MemoryEstimate:
    """The named terms of the predicted peak of one optimizer step (per process: under
    parallel="fsdp" the model state is sharded over `world_size` processes)."""
    rows = model.vocab_rows(vocab_size)
    p = params_count(model, rows)
    mixed = dtype != "float32"
    d = model.n_embd
    per_token_layers = _layers_per_token(model, mixed, device, compiled, fused_attention, checkpointing)
    chunk = loss_chunk_tokens(rows, device)
    logits = _logits_per_token(rows, d, mixed, compiled, chunk)
    embed = (EMBED_VALUES_CUDA_EAGER if device == "cuda" and not compiled else EMBED_VALUES) * d * 4
    per_token = per_token_layers + logits + embed
    terms = {
        "weights": 4 * p,
        # Autocast keeps a 16-bit copy of each weight for the step.
        "weight_casts": 2 * p if mixed else 0,
        "gradients": 4 * p,
        "optimizer": 8 * p,
        "activations": int((per_token_layers + embed) * model.seq_len) * micro_batch_size,
        "logits": int(logits * model.seq_len) * micro_batch_size,
        "compiler": COMPILER.get(device, 0) if compiled else 0,
        "overhead": OVERHEAD.get(device, OVERHEAD["cpu"]),
    }
    if chunk:
        # One chunk's logits when eager (compiled, every token's are counted above), and the
        # head's float32 weight gradient.
        per_logit = 0 if compiled else CHUNK_LOGIT_BYTES[f"eager_{'mixed' if mixed else 'fp32'}"]
        terms["logits"] += per_logit * min(micro_batch_size * model.seq_len, chunk) * rows + 4 * rows * d
    if parallel == "fsdp":
        terms.update(sharded_terms(model, rows, dtype, device, world_size, accumulate_unsharded))
    return MemoryEstimate(terms=terms, per_sample=int(per_token * model.seq_len))


def _layers_per_token(model: ModelConfig, mixed: bool, kind: str, compiled: bool, fused_attention: bool,
                      checkpointing: bool) -> float:
    """Bytes the blocks save for the backward pass, per token (all layers)."""
    d, f, kv = model.n_embd, model.ffn_size, model.kv_heads * model.head_dim
    act_bytes = 2 if mixed else 4
    # Saved per token: norm inputs/outputs and the attention input/output (8 d), q/k/v
    # around rope (3 kv), the MLP's gate/up, SiLU and product (4 f). The two residual
    # values stay fp32 under autocast; the rest is 16-bit there.
    layer = LAYER_FACTOR.get(kind, LAYER_FACTOR["cpu"]) * (2 * d * 4 + (6 * d + 3 * kv + 4 * f) * act_bytes)
    if compiled:
        layer *= COMPILED_LAYER_SHARE.get(kind, COMPILED_LAYER_SHARE["cpu"])
    if not fused_attention:
        # The math path keeps the score and probability matrices: 2 x heads x T per token.
        layer += 2 * model.n_head * model.seq_len * 4
    if checkpointing:
        # Only each block's input is kept; one block is recomputed at a time.
        return model.n_layer * d * 4 + layer
    return model.n_layer * layer


def _logits_per_token(rows: int, d: int, mixed: bool, compiled: bool, chunk: int) -> float:
    """Bytes of the output head's loss per token (a chunked loss adds one chunk's apart)."""
    if chunk:
        # Per token only the hidden state's float32 gradient, made in the forward pass; one
        # chunk's logits and the head's float32 weight gradient are added by the caller.
        return 4 * d + (rows * COMPILED_CHUNKED_LOGIT_BYTES["mixed" if mixed else "fp32"] if compiled else 0)
    if compiled:
        return rows * (LOGITS_BYTES_COMPILED_MIXED if mixed else LOGITS_COPIES_COMPILED_FP32 * 4)
    return rows * (LOGITS_BYTES_MIXED if mixed else LOGITS_COPIES_FP32 * 4)
