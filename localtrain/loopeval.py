"""The loop's evaluations and live samples: validation figures, the best checkpoint, early stopping.

`Evaluation` is mixed into `localtrain.train.Trainer`, whose backend, data, validation
batches, state and config it reads. An evaluation that improves on the best figure by more
than train.early_stop_min_delta writes best/; one that does not counts towards
train.early_stop_patience.
"""

from __future__ import annotations

import math

import numpy as np

from localtrain import checkpoint, events as ev, metrics, quality, sampling
from localtrain.evaluate import token_words

class Evaluation:
    """Validation and live samples of a Trainer (the methods take the trainer as `self`)."""

    def val_words(self) -> int:
        """Words (WikiText convention) of the validation targets, counted once: the batches are fixed."""
        if getattr(self, "_val_words", None) is None:
            d = self.data
            self._val_words = sum(
                token_words(y[r], int(x[r, 0]), d.decode, d.eos_id) for x, y in self.val_batches for r in range(len(y))
            )
        return self._val_words

    def evaluate(self) -> None:
        nats, count, nbytes = 0.0, 0, 0
        for x, y in self.val_batches:
            losses = self.backend.token_losses(x, y)
            nats += float(losses.astype(np.float64).sum())
            count += losses.size
            nbytes += int(self.data.token_bytes[y.astype(np.int64)].sum())
        if self.every_rank:
            # Every rank takes the same best-checkpoint decision (a collective gather).
            nats = self.dist.all_max([nats])[0]
        loss = nats / count
        words = self.val_words()
        st, t = self.state, self.config.train
        figures = {
            "val_loss": loss, "val_ppl": metrics.perplexity(loss), "val_bpb": metrics.bits_per_byte(nats, nbytes),
            "val_word_ppl": metrics.perplexity(nats / words) if words else float("nan"),
        }
        value = figures[t.best_metric]
        is_best = st.step > 0 and math.isfinite(value) and (
            st.best_metric is None or value < st.best_metric - t.early_stop_min_delta
        )
        if is_best:
            st.best_val_loss, st.best_metric, st.best_step, st.evals_since_best = loss, value, st.step, 0
        elif st.step > 0:
            st.evals_since_best += 1
        self.emit(ev.Eval(
            step=st.step, val_loss=loss, val_ppl=figures["val_ppl"], val_bpb=figures["val_bpb"], val_tokens=count,
            val_bytes=nbytes, best_val_loss=st.best_val_loss if st.best_val_loss is not None else loss,
            is_best=is_best, val_words=words, val_word_ppl=figures["val_word_ppl"], best_metric=t.best_metric,
            best_value=st.best_metric if st.best_metric is not None else value,
        ))
        if is_best:
            weights, _ = self.backend.state_arrays()
            if self.dist.is_main:
                checkpoint.save_best(self.run_dir, weights, {**self.checkpoint_state(), "val_loss": loss,
                                                             t.best_metric: value})

    def sample(self, seed: int | None = None) -> None:
        """One live sample per prompt, each with its quality figures, then the batch's figures.

        Scheduled samples (`seed` None) draw from seeds fixed by train.seed and the step, so a
        rerun shows the same text; one asked for by a controller draws from the fresh `seed` it
        was given, so asking at a scheduled step shows new text, and its events say which seed.
        """
        t = self.config.train
        code = quality.is_code(self.config.data)
        manual = seed is not None
        base = seed if seed is not None else t.seed * 1_000_003 + self.state.step * 101
        found = []
        for i, prompt in enumerate(t.sample_prompts):
            ids = self.data.encode(prompt) or [self.data.eos_id]
            drawn = base + i
            out = sampling.generate(self.backend, ids, t.sample_tokens, t.temperature, t.top_k, drawn,
                                    dtype=self.plan.sample_dtype or None, stop_id=self.data.eos_id)
            text = self.data.decode(out)
            q = quality.sample_quality(text, code, prompt)
            found.append(q)
            self.emit(ev.Sample(step=self.state.step, prompt=prompt, text=text, tokens=len(out), seed=drawn,
                                manual=manual, **q.to_dict()))
        self.emit(ev.SampleQuality(step=self.state.step, **quality.summarize(found)))
