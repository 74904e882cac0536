"""The baseline the training-step benchmarks compare with: nanoGPT's GPT-2 model and step, written out.

A GPT-2 block (LayerNorm without bias, learned positions, a 4x GELU MLP, causal SDPA, no
biases, the output head tied to the token embedding) and nanoGPT's training step:
forward under autocast, the loss over the full float32 logits, backward, clipping at 1.0,
AdamW (fused on CUDA, torch's default implementation elsewhere, as nanoGPT chooses; or
fused wherever torch has it, with fused_adamw=True), gradients set to None. The benchmarks time it beside
localtrain's step on the same shape, the same data and the same device.
"""

from __future__ import annotations

import contextlib

import numpy as np


class GPT2Baseline:
    """A GPT-2 model of the given shape and its training step on `device`."""

    def __init__(self, vocab: int, n_layer: int, n_head: int, n_embd: int, seq_len: int, device: str = "cpu",
                 dtype: str = "float32", compile: bool = False, compile_mode: str | None = None,
                 fused_adamw: bool | None = None) -> None:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.ln1, self.ln2 = nn.LayerNorm(n_embd, bias=False), nn.LayerNorm(n_embd, bias=False)
                self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
                self.proj = nn.Linear(n_embd, n_embd, bias=False)
                self.fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
                self.out = nn.Linear(4 * n_embd, n_embd, bias=False)

            def forward(self, x):
                B, T, C = x.shape
                q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
                q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
                return x + self.out(F.gelu(self.fc(self.ln2(x))))

        class GPT(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(seq_len, n_embd)
                self.blocks = nn.ModuleList(Block() for _ in range(n_layer))
                self.ln_f = nn.LayerNorm(n_embd, bias=False)

            def forward(self, idx, targets):
                pos = torch.arange(idx.shape[1], device=idx.device)
                x = self.wte(idx) + self.wpe(pos)
                for block in self.blocks:
                    x = block(x)
                logits = self.ln_f(x) @ self.wte.weight.T
                return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

        self.torch, self.device = torch, device
        torch.manual_seed(0)
        self.model = GPT().to(device)
        for name, p in self.model.named_parameters():  # nanoGPT's initialisation
            if p.dim() >= 2:
                std = 0.02 / (2 * n_layer) ** 0.5 if name.endswith(("proj.weight", "out.weight")) else 0.02
                torch.nn.init.normal_(p, 0.0, std)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                     lr=1e-3, betas=(0.9, 0.95),
                                     fused=device == "cuda" if fused_adamw is None else fused_adamw)
        self.params = sum(p.numel() for p in self.model.parameters())
        # nanoGPT's MFU counts every parameter but the position table (the head is the tied embedding).
        self.flops_per_token = 6.0 * (self.params - seq_len * n_embd) + 12.0 * n_layer * n_embd * seq_len
        self.train_model = torch.compile(self.model, dynamic=False, mode=compile_mode) if compile else self.model
        self.dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        self.scaler = torch.amp.GradScaler(device) if dtype == "float16" else None

    def _tensor(self, a: np.ndarray):
        t = self.torch.from_numpy(a.astype(np.int64))
        return t.pin_memory().to(self.device, non_blocking=True) if self.device == "cuda" else t

    def train_step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
        """One optimizer step over the micro-batches (gradients accumulated as their mean); the loss."""
        torch = self.torch
        autocast = (torch.autocast(self.device, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        total = 0.0
        for x, y in micro_batches:
            with autocast:
                loss = self.train_model(self._tensor(x), self._tensor(y)) / len(micro_batches)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total = total + loss.detach()
        if self.scaler:
            self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(total)
