"""The Llama-style decoder in PyTorch: RMSNorm, rotary positions, SwiGLU, tied embeddings.

Inside a block the query/key/value projections live in one matrix and the gate/up
projections in another, so each is one matmul; `shared_layout()` maps the shared
parameter names every backend and checkpoint use (the Hugging Face Llama names) onto
row ranges of these matrices.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.utils.checkpoint
import torch.nn.functional as F

from localtrain.backends.torch_loss import chunked_cross_entropy, chunked_token_losses
from localtrain.config import ModelConfig


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (seq_len, head_dim / 2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot: torch.Tensor | None) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x: (B, T, nh, hs) by the angles (T, hs/2).

    With `rot` = cos + i sin as a complex (T, 1, hs/2) tensor the rotation is one complex
    multiply, one kernel forward and backward: fastest on CPU and CUDA. Without it
    (MPS lacks some complex kernels) the same rotation runs in real arithmetic.
    """
    if rot is not None:
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(xc * rot).flatten(-2).type_as(x)
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2).type_as(x)


def interleave_rows(n_heads: int, head_dim: int) -> torch.Tensor:
    """Where each row of the shared (rotate-half) q/k layout sits in the interleaved one.

    Per head, shared row i pairs with row i + hs/2; here the pair sits side by side at
    rows 2i and 2i + 1, so rope is one complex multiply. shared[j] = internal[rows[j]].
    """
    half = head_dim // 2
    within = torch.cat([torch.arange(half) * 2, torch.arange(half) * 2 + 1])
    return torch.cat([h * head_dim + within for h in range(n_heads)])


class LayerCaches:
    """Each layer's key/value cache. Not a list: FSDP rebuilds the lists among a forward's
    arguments when it moves them to a GPU, and the layers must append to these very ones."""

    def __init__(self, layers: int) -> None:
        self.layers: list[list] = [[] for _ in range(layers)]

    def __getitem__(self, i: int) -> list:
        return self.layers[i]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.kv_heads, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q_size = cfg.n_head * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(self.q_size, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout
        # Attention in float32 under a 16-bit autocast, where that was measured faster (torch_attention).
        self.upcast = False

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        cache: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        nh, nkv = self.n_head, self.kv_heads
        qkv = self.qkv_proj(x).view(B, T, nh + 2 * nkv, self.head_dim)
        # split (not slicing): its backward is one concatenation, not zero-filled copies.
        qk, v = qkv.split([nh + nkv, nkv], dim=2)
        # Queries and keys rotate together: one rope for both.
        q, k = apply_rope(qk, *rope).split([nh, nkv], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hs)
        causal = True
        if cache is not None:
            if cache:
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
                # A single new query sees every cached key; a longer chunk is only ever
                # fed as the prefill.
                causal = T > 1
            cache[:] = [k, v]
        if nkv != nh:
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        p = self.dropout if self.training else 0.0
        if self.upcast and q.dtype != torch.float32:
            with torch.autocast(q.device.type, enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal,
                                                   dropout_p=p).to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, self.q_size)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ffn = cfg.ffn_size
        self.gate_up_proj = nn.Linear(cfg.n_embd, 2 * self.ffn, bias=False)
        self.down_proj = nn.Linear(self.ffn, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.ffn, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = cfg.dropout

    def forward(self, x, rope, cache=None):
        h = self.self_attn(self.input_layernorm(x), rope, cache)
        x = x + F.dropout(h, self.dropout, self.training)
        h = self.mlp(self.post_attention_layernorm(x))
        return x + F.dropout(h, self.dropout, self.training)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)


class LlamaLM(nn.Module):
    """Decoder-only language model; the output head is the token embedding (tied)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.model = Decoder(cfg, cfg.vocab_rows(vocab_size))
        cos, sin = rope_tables(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_rot", torch.complex(cos, sin)[:, None, :], persistent=False)
        self.complex_rope = True
        self.checkpointing = False
        # Tokens per chunk of the output head's loss (torch_loss); 0 makes the full logits.
        self.loss_chunk = 0

    def init_weights(self, generator: torch.Generator) -> None:
        """Normal(0, init_std) matrices; residual outputs scaled by 1/sqrt(2 n_layer) as in GPT-2."""
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layer)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                else:
                    residual = name.endswith(("o_proj.weight", "down_proj.weight"))
                    p.normal_(0.0, residual_std if residual else std, generator=generator)

    def hidden(self, idx: torch.Tensor, start: int = 0, caches: LayerCaches | None = None) -> torch.Tensor:
        T = idx.shape[1]
        rope = (
            self.rope_cos[start : start + T],  # (T, hs/2)
            self.rope_sin[start : start + T],
            self.rope_rot[start : start + T] if self.complex_rope else None,  # (T, 1, hs/2)
        )
        x = F.dropout(self.model.embed_tokens(idx), self.cfg.dropout, self.training)
        for i, layer in enumerate(self.model.layers):
            if self.checkpointing and self.training and caches is None:
                # Keep only the block's input; its activations are recomputed (with the
                # same dropout masks) during the backward pass.
                x = torch.utils.checkpoint.checkpoint(layer, x, rope, use_reentrant=False)
            else:
                x = layer(x, rope, None if caches is None else caches[i])
        return self.model.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        # Padded rows never receive a target; they are masked out where sampled.
        return F.linear(h, self.model.embed_tokens.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting `targets` from `idx`, both (B, T)."""
        h = self.hidden(idx)  # (B, T, d)
        if self.loss_chunk:
            return chunked_cross_entropy(
                h.flatten(0, 1), self.model.embed_tokens.weight, targets.flatten(), self.loss_chunk
            )
        logits = self.logits(h)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def token_losses(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood in nats, (B, T)."""
        h = self.hidden(idx)
        if self.loss_chunk:
            losses = chunked_token_losses(
                h.flatten(0, 1), self.model.embed_tokens.weight, targets.flatten(), self.loss_chunk
            )
            return losses.view(targets.shape)
        logits = self.logits(h).float()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


Rows = torch.Tensor | slice
Layout = dict[str, tuple[nn.Parameter, Rows]]


def shared_layout(model: LlamaLM) -> Layout:
    """Shared parameter name -> (parameter, its rows) in the fused, interleaved layout.

    The rows are a slice, or for q/k an index tensor: `param[rows]` is the shared tensor.
    """
    cfg = model.cfg
    q, kv, ffn = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn_size
    q_rows = interleave_rows(cfg.n_head, cfg.head_dim)
    k_rows = q + interleave_rows(cfg.kv_heads, cfg.head_dim)
    whole = slice(None)
    layout: Layout = {"model.embed_tokens.weight": (model.model.embed_tokens.weight, whole)}
    for i, layer in enumerate(model.model.layers):
        pre = f"model.layers.{i}."
        qkv = layer.self_attn.qkv_proj.weight
        layout[pre + "self_attn.q_proj.weight"] = (qkv, q_rows)
        layout[pre + "self_attn.k_proj.weight"] = (qkv, k_rows)
        layout[pre + "self_attn.v_proj.weight"] = (qkv, slice(q + kv, q + 2 * kv))
        layout[pre + "self_attn.o_proj.weight"] = (layer.self_attn.o_proj.weight, whole)
        gate_up = layer.mlp.gate_up_proj.weight
        layout[pre + "mlp.gate_proj.weight"] = (gate_up, slice(0, ffn))
        layout[pre + "mlp.up_proj.weight"] = (gate_up, slice(ffn, 2 * ffn))
        layout[pre + "mlp.down_proj.weight"] = (layer.mlp.down_proj.weight, whole)
        layout[pre + "input_layernorm.weight"] = (layer.input_layernorm.weight, whole)
        layout[pre + "post_attention_layernorm.weight"] = (layer.post_attention_layernorm.weight, whole)
    layout["model.norm.weight"] = (model.model.norm.weight, whole)
    return layout


def grouped_layout(layout: Layout) -> list[tuple[nn.Parameter, list[tuple[str, Rows]]]]:
    """The layout as (parameter, [(shared name, rows)]): q, k and v share one matrix."""
    groups: dict[int, tuple[nn.Parameter, list[tuple[str, Rows]]]] = {}
    for name, (p, rows) in layout.items():
        groups.setdefault(id(p), (p, []))[1].append((name, rows))
    return list(groups.values())


def rows_shape(shape: torch.Size, rows: Rows) -> tuple[int, ...]:
    """The shape of `full[rows]` for a full tensor of `shape`, without the tensor."""
    count = len(range(shape[0])[rows]) if isinstance(rows, slice) else len(rows)
    return (count, *shape[1:])
