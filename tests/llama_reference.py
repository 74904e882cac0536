"""A plain float64 Llama forward from the shared (Hugging Face) tensor names, written apart from
both backends: rotate-half rope, RMSNorm, SwiGLU, grouped-query attention, tied embeddings.
Tests score checkpoints and backends against it."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from localtrain.config import ModelConfig


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _tensors(weights: dict[str, np.ndarray], grad: bool = False) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)).double().requires_grad_(grad) for k, v in weights.items()}


def logits(weights: dict[str, np.ndarray], cfg: ModelConfig, idx: np.ndarray) -> torch.Tensor:
    """(B, T) token ids -> (B, T, rows) float64 logits over every embedding row, padded ones included."""
    with torch.no_grad():
        return _logits(_tensors(weights), cfg, idx)


def _logits(w: dict[str, torch.Tensor], cfg: ModelConfig, idx: np.ndarray) -> torch.Tensor:
    x = w["model.embed_tokens.weight"][torch.from_numpy(np.asarray(idx, dtype=np.int64))]
    B, T, _ = x.shape
    hd, nh, nkv = cfg.head_dim, cfg.n_head, cfg.kv_heads
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()  # (T, hd)

    def rope(v: torch.Tensor) -> torch.Tensor:  # (B, heads, T, hd): pairs (i, i + hd/2)
        return v * cos + torch.cat([-v[..., hd // 2:], v[..., : hd // 2]], -1) * sin

    def heads(v: torch.Tensor, n: int) -> torch.Tensor:  # (B, T, n * hd) -> (B, n, T, hd)
        return v.view(B, T, n, hd).transpose(1, 2)

    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        h = _rms(x, w[p + "input_layernorm.weight"], cfg.norm_eps)
        q = rope(heads(h @ w[p + "self_attn.q_proj.weight"].T, nh))
        k = rope(heads(h @ w[p + "self_attn.k_proj.weight"].T, nkv)).repeat_interleave(nh // nkv, 1)
        v = heads(h @ w[p + "self_attn.v_proj.weight"].T, nkv).repeat_interleave(nh // nkv, 1)
        att = ((q @ k.transpose(-1, -2)) / math.sqrt(hd)).masked_fill(causal, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = _rms(x, w[p + "post_attention_layernorm.weight"], cfg.norm_eps)
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return _rms(x, w["model.norm.weight"], cfg.norm_eps) @ w["model.embed_tokens.weight"].T


def _nats(w: dict[str, torch.Tensor], cfg: ModelConfig, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    z = _logits(w, cfg, x)
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))[..., None]
    return torch.logsumexp(z, -1) - z.gather(-1, target)[..., 0]


def token_nats(weights: dict[str, np.ndarray], cfg: ModelConfig, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B, T) float64 negative log-likelihood of each target, normalised over every embedding row."""
    with torch.no_grad():
        return _nats(_tensors(weights), cfg, x, y).numpy()


def grad_norm(weights: dict[str, np.ndarray], cfg: ModelConfig, x: np.ndarray, y: np.ndarray) -> float:
    """The global norm of the gradient of the mean token loss over every parameter, in float64."""
    w = _tensors(weights, grad=True)
    _nats(w, cfg, x, y).mean().backward()
    return float(torch.sqrt(sum(t.grad.pow(2).sum() for t in w.values())))
