"""Cross-entropy through the tied output head, a chunk of tokens at a time.

The logits of a step are the largest tensor in training: tokens x vocabulary rows, held
in 16 bits by the head's matmul, then in float32 for the loss and again for its gradient
(for gpt2-124m at micro-batch 32, some 20 GB). Here the head's matmul and the loss run a
chunk of tokens at a time, and so does the loss's gradient: for a mean cross-entropy the
gradient with respect to the logits is already known in the forward pass (softmax minus
the one-hot target, over the token count), so the forward pass multiplies it into the
gradients of the hidden states and of the head's weight right away, and the backward
pass only scales them by the incoming gradient. No matmul is added, and at most one
chunk's logits exist at a time. The chunk size is `base.loss_chunk_tokens`.
"""

from __future__ import annotations

import torch


def _matmul_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run the head's matmul in (the input's own without autocast)."""
    device = h.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return h.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softmax(h @ weight.T) against targets, gradients made in forward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                dtype: torch.dtype) -> torch.Tensor:
        n, acc = h.shape[0], torch.promote_types(dtype, torch.float32)
        w = weight.to(dtype)
        total = torch.zeros((), dtype=acc, device=h.device)
        grad_h, grad_w = [], torch.zeros(weight.shape, dtype=acc, device=weight.device)
        for hc, yc in zip(h.to(dtype).split(chunk), targets.split(chunk)):
            z = (hc @ w.T).to(acc)  # (C, V)
            target = z.gather(1, yc[:, None])  # (C, 1)
            # d loss / d z, unscaled: softmax - one-hot, each entry in [-1, 1], so it keeps
            # its precision in float16 too; the 1/n and the incoming gradient come in backward.
            if torch.compiler.is_compiling():
                # Pointwise only: the compiler makes it one kernel from the 16-bit logits,
                # written over their buffer.
                lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (C, 1)
                hit = torch.arange(z.shape[1], device=z.device) == yc[:, None]
                dz = (torch.exp(z - lse) - hit.to(acc)).to(dtype)
            else:
                # In place, with no temporary of the chunk's size (torch.logsumexp makes one):
                # the chunk's logits are not needed again.
                top = z.amax(dim=-1, keepdim=True)
                p = z.sub_(top).exp_()  # (C, V), unnormalized
                total_p = p.sum(dim=-1, keepdim=True)
                lse = top + total_p.log()
                dz = p.div_(total_p).scatter_add_(1, yc[:, None], z.new_full((yc.shape[0], 1), -1.0)).to(dtype)
                del z, p  # from here only dz: the chunk's peak is the float32 logits beside it
            total = total + (lse - target).sum()
            grad_h.append(dz @ w)  # (C, d)
            grad_w.add_(dz.T @ hc)  # (V, d), summed in float32 in place
            del dz  # before the next chunk's logits are made
        ctx.save_for_backward(torch.cat(grad_h).to(h.dtype), grad_w.to(weight.dtype))
        ctx.n = n
        return total / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad / ctx.n
        return grad_h * scale.to(grad_h.dtype), grad_w * scale.to(grad_w.dtype), None, None, None


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean cross-entropy (float32) of the logits h @ weight.T, h: (N, d), weight: (V, d), targets: (N,).

    Equal to F.cross_entropy((h @ weight.T).float(), targets) up to rounding, in value and
    in the gradients of h and weight; the logits are made `chunk` tokens at a time.
    """
    dtype = _matmul_dtype(h)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, chunk, dtype)
    return chunked_token_losses(h, weight, targets, chunk).mean()


def chunked_token_losses(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-token cross-entropy in nats (float32 or wider, (N,)), without gradients, `chunk` tokens at a time."""
    dtype = _matmul_dtype(h)
    acc = torch.promote_types(dtype, torch.float32)
    w = weight.to(dtype)
    out = []
    with torch.no_grad():
        for hc, yc in zip(h.to(dtype).split(chunk), targets.split(chunk)):
            z = (hc @ w.T).to(acc)
            out.append(torch.logsumexp(z, dim=-1) - z.gather(1, yc[:, None]).squeeze(1))
    return torch.cat(out)
