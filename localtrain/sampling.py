"""Text generation, once for every backend: the sampling rule and the decoding loop.

A backend gives a `Decoder` (backends/base.py): the scores over the vocabulary at the last
position of a context, then after each token appended, from its key/value cache. This
module turns scores into tokens — temperature, then top-k, then the top-p nucleus — from
a numpy generator of its own, so that the same seed gives the same text on every backend
and device and the training RNG is never touched. When the context window is full the
decoder starts again from the last half of the text (rotary positions are relative, so
the restart changes nothing else).
"""

from __future__ import annotations

import numpy as np

from localtrain.backends.base import Backend


def sample_token(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """Draw one id from float scores: temperature, then top-k, then the top-p nucleus."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if top_k and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z[z < kth] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        # Keep the most likely tokens until their mass reaches top_p (at least one).
        p[order[cum - p[order] >= top_p]] = 0.0
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def generate(backend: Backend, prompt: list[int], max_new_tokens: int, temperature: float, top_k: int,
             seed: int, top_p: float = 1.0, dtype: str | None = None, stop_id: int | None = None) -> list[int]:
    """Continue `prompt` by sampling, computing in `dtype` (None: the backend's), up to `stop_id`
    (not included: the end of a document); the same seed gives the same tokens. top_k=1 is greedy."""
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    rng = np.random.default_rng(seed)
    decoder = backend.decoder(dtype)
    out = list(prompt)
    scores = decoder.start(out[-decoder.window:])
    for i in range(max_new_tokens):
        token = sample_token(scores, temperature, top_k, top_p, rng)
        if token == stop_id:
            break
        out.append(token)
        if i == max_new_tokens - 1:
            break
        if decoder.length >= decoder.window:
            scores = decoder.start(out[-(decoder.window // 2):])
        else:
            scores = decoder.extend(token)
    return out[len(prompt):]
