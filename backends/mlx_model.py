"""The Llama-style decoder in MLX: RMSNorm, rotary positions, SwiGLU, tied embeddings.

The model is a set of functions of one flat dict of arrays keyed by the shared
parameter names (the Hugging Face Llama names), so a checkpoint's tensors are the
model's own: no fused matrices and no reordered rows. q/k rows are in the shared
rotate-half layout, which `mx.fast.rope(traditional=False)` rotates directly.

Weights stay float32; a bfloat16 run casts them for each matmul and keeps the residual
stream, the norms and the loss in float32, as torch's autocast does.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx

from localtrain.config import ModelConfig

Params = dict[str, mx.array]
LAYER_KEYS = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
)
EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"
QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")


def param_shapes(cfg: ModelConfig, rows: int) -> dict[str, tuple[int, ...]]:
    """Shared name -> shape, in the order every backend lists its parameters."""
    d, q, kv, ffn = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn_size
    per_layer = ((q, d), (kv, d), (kv, d), (d, q), (ffn, d), (ffn, d), (d, ffn), (d,), (d,))
    shapes: dict[str, tuple[int, ...]] = {EMBED: (rows, d)}
    for i in range(cfg.n_layer):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in zip(LAYER_KEYS, per_layer)})
    shapes[NORM] = (d,)
    return shapes


def init_params(cfg: ModelConfig, rows: int, seed: int) -> Params:
    """Normal(0, init_std) matrices, residual outputs scaled by 1/sqrt(2 n_layer), norms 1."""
    shapes = param_shapes(cfg, rows)
    keys = mx.random.split(mx.random.key(seed), len(shapes))
    residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
    params: Params = {}
    for key, (name, shape) in zip(keys, shapes.items()):
        if len(shape) == 1:
            params[name] = mx.ones(shape, dtype=mx.float32)
        else:
            std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else cfg.init_std
            params[name] = mx.random.normal(shape, dtype=mx.float32, key=key) * std
    return params


def _dropout(x: mx.array, p: float, key: mx.array | None) -> mx.array:
    if not p or key is None:
        return x
    keep = mx.random.bernoulli(1.0 - p, x.shape, key=key)
    return mx.where(keep, x / (1.0 - p), mx.zeros_like(x))


def _attention(
    lp: Params, x: mx.array, cfg: ModelConfig, dtype: mx.Dtype, start: int, cache: list | None,
    key: mx.array | None,
) -> mx.array:
    B, T, _ = x.shape
    nh, nkv, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
    # One matmul for q, k and v: their matrices stacked (and cast) for this step.
    qkv = x.astype(dtype) @ _stacked(lp, QKV, dtype).T
    qkv = qkv.reshape(B, T, nh + 2 * nkv, hd).transpose(0, 2, 1, 3)  # (B, heads, T, hs)
    q, k, v = mx.split(qkv, [nh, nh + nkv], axis=1)
    q = mx.fast.rope(q, hd, traditional=False, base=cfg.rope_theta, scale=1.0, offset=start)
    k = mx.fast.rope(k, hd, traditional=False, base=cfg.rope_theta, scale=1.0, offset=start)
    if cache is not None:
        if cache:
            k = mx.concatenate([cache[0], k], axis=2)
            v = mx.concatenate([cache[1], v], axis=2)
        cache[:] = [k, v]
    scale = 1.0 / math.sqrt(hd)
    if key is not None and cfg.dropout:
        # Dropout on the attention weights needs them written out.
        if nkv != nh:
            k, v = mx.repeat(k, nh // nkv, axis=1), mx.repeat(v, nh // nkv, axis=1)
        scores = (q * scale) @ k.transpose(0, 1, 3, 2)  # (B, nh, T, T)
        causal = mx.triu(mx.ones((T, T), dtype=mx.bool_), k=1)
        scores = mx.where(causal, mx.array(-mx.inf, dtype=scores.dtype), scores)
        weights = mx.softmax(scores.astype(mx.float32), axis=-1, precise=True)
        y = _dropout(weights, cfg.dropout, key).astype(dtype) @ v
    else:
        # "causal" aligns the last query with the last key: right for a cached prefix too.
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal" if T > 1 else None)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, nh * hd)
    return y @ lp["self_attn.o_proj.weight"].astype(dtype).T


def _mlp(lp: Params, x: mx.array, dtype: mx.Dtype) -> mx.array:
    gate, up = mx.split(x.astype(dtype) @ _stacked(lp, GATE_UP, dtype).T, 2, axis=-1)  # one matmul for both
    return (gate * mx.sigmoid(gate) * up) @ lp["mlp.down_proj.weight"].astype(dtype).T  # SiLU(gate) * up


def _stacked(lp: Params, names: tuple[str, ...], dtype: mx.Dtype) -> mx.array:
    """The named matrices stacked by rows in the compute dtype (the gradient splits back by rows).

    Cast first: the copy the stacking makes is then of 16-bit values.
    """
    return mx.concatenate([lp[n].astype(dtype) for n in names], axis=0)


def block(
    lp: Params, x: mx.array, cfg: ModelConfig, dtype: mx.Dtype, start: int = 0, cache: list | None = None,
    key: mx.array | None = None,
) -> mx.array:
    """One decoder block on the float32 residual stream x: (B, T, d)."""
    keys = mx.random.split(key, 3) if key is not None else (None, None, None)
    h = mx.fast.rms_norm(x, lp["input_layernorm.weight"], cfg.norm_eps)
    h = _attention(lp, h, cfg, dtype, start, cache, keys[0])
    x = x + _dropout(h.astype(mx.float32), cfg.dropout, keys[1])
    h = _mlp(lp, mx.fast.rms_norm(x, lp["post_attention_layernorm.weight"], cfg.norm_eps), dtype)
    return x + _dropout(h.astype(mx.float32), cfg.dropout, keys[2])


def hidden(
    params: Params, idx: mx.array, cfg: ModelConfig, dtype: mx.Dtype, start: int = 0,
    caches: list | None = None, key: mx.array | None = None, checkpoint: bool = False,
) -> mx.array:
    """Final-norm hidden states (B, T, d) of token ids idx: (B, T).

    `key` turns dropout on (training); `caches` (one list per layer) keeps keys and
    values for generation; `checkpoint` recomputes each block in the backward pass.
    """
    keys = mx.random.split(key, cfg.n_layer + 1) if key is not None and cfg.dropout else None
    x = _dropout(params[EMBED][idx], cfg.dropout, keys[0] if keys is not None else None)
    for i in range(cfg.n_layer):
        lp = {name: params[f"model.layers.{i}.{name}"] for name in LAYER_KEYS}
        k = keys[i + 1] if keys is not None else None
        if checkpoint and caches is None:
            # Only the block's input is kept; its activations (and, from the same key,
            # its dropout masks) are recomputed in the backward pass. The key is closed
            # over, not an input: it has no gradient.
            x = mx.checkpoint(lambda lp_, x_, k_=k: block(lp_, x_, cfg, dtype, key=k_))(lp, x)
        else:
            x = block(lp, x, cfg, dtype, start, None if caches is None else caches[i], k)
    return mx.fast.rms_norm(x, params[NORM], cfg.norm_eps)


def head(params: Params, h: mx.array, dtype: mx.Dtype) -> mx.array:
    """Scores over every (padded) embedding row in the compute dtype: (..., rows)."""
    return h.astype(dtype) @ params[EMBED].astype(dtype).T


def logits(params: Params, h: mx.array, dtype: mx.Dtype) -> mx.array:
    """Scores over every (padded) embedding row, float32: (..., rows)."""
    return head(params, h, dtype).astype(mx.float32)


@mx.custom_function
def cross_entropy(z: mx.array, y: mx.array) -> mx.array:
    """Per-token cross-entropy (float32) of logits z: (..., V) in any float dtype, targets y: (...)."""
    z32 = z.astype(mx.float32)
    return mx.logsumexp(z32, axis=-1) - mx.take_along_axis(z32, y[..., None], axis=-1)[..., 0]


@cross_entropy.vjp
def _cross_entropy_vjp(primals, cotangent, output):
    # softmax(z) - one-hot(y), times the incoming gradient: one elementwise pass over the
    # logits that writes the gradient in their own dtype. (Differentiating the forward
    # instead writes float32 copies of the logits, a scattered zero array and their sum.)
    z, y = primals
    z32 = z.astype(mx.float32)
    target = mx.take_along_axis(z32, y[..., None], axis=-1)
    lse = output[..., None] + target  # output = lse - target
    hit = mx.arange(z.shape[-1], dtype=y.dtype) == y[..., None]
    grad = (mx.exp(z32 - lse) - hit.astype(mx.float32)) * cotangent[..., None]
    return grad.astype(z.dtype), mx.zeros_like(y)


def token_losses(
    params: Params, x: mx.array, y: mx.array, cfg: ModelConfig, dtype: mx.Dtype,
    key: mx.array | None = None, checkpoint: bool = False,
) -> mx.array:
    """Per-token negative log-likelihood in nats, (B, T)."""
    return cross_entropy(head(params, hidden(params, x, cfg, dtype, key=key, checkpoint=checkpoint), dtype), y)


def loss(params: Params, x: mx.array, y: mx.array, cfg: ModelConfig, dtype: mx.Dtype, **kw: Any) -> mx.array:
    """Mean cross-entropy of predicting y from x, both (B, T)."""
    return token_losses(params, x, y, cfg, dtype, **kw).mean()
