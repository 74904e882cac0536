"""Range and consistency checks of a resolved configuration.

Each problem names the key, the value, what is wrong and the fix; `check` returns them
all so that the caller reports every problem at once. Besides the lower bounds, every
number that sizes a loop, an allocation or a counter has an upper bound (`LIMITS`), so
that a typo such as `train.batch_size=1e12` fails at once instead of hanging the
planner or overflowing a 64-bit token count, and every float must be finite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from localtrain.files import parse_size
from localtrain.schema import BACKENDS, DEVICES, DTYPES, PARALLELS, SECTIONS, SWITCHES, TOKENIZER_TYPES, VOCAB_FITS, Config, DataConfig, ModelConfig, RunConfig, TrainConfig, did_you_mean


EVAL_METRICS = ("val_loss", "val_ppl", "val_bpb", "val_word_ppl")
"""The Eval event's figures that train.best_metric may name; lower is better for each."""

STEPS = 10**12
"""More optimizer steps than any run takes (30 years at 1,000 steps a second)."""
MAX_TOKENS = 10**18
"""Tokens a run may train on: the counters are 64-bit (9.2e18)."""
LIMITS: dict[str, int] = {
    "model.n_layer": 1024, "model.n_head": 1024, "model.n_embd": 65536, "model.intermediate_size": 1 << 20,
    "model.seq_len": 1 << 20, "model.pad_vocab_multiple": 65536,
    "data.document_bytes": 1 << 30, "data.min_chars": 1 << 31, "data.shard_tokens": 1 << 31,
    "data.tokenizer_sample_bytes": 1 << 36, "data.phase_epochs": 10**6,
    "train.batch_size": 1 << 20, "train.micro_batch_size": 1 << 20, "train.max_steps": STEPS,
    "train.max_tokens": MAX_TOKENS, "train.warmup_steps": STEPS, "train.eval_every": STEPS,
    "train.eval_batches": 10**6, "train.sample_every": STEPS, "train.sample_tokens": 10**6,
    "train.top_k": 1 << 31, "train.checkpoint_every": STEPS,
    "train.early_stop_patience": 10**6, "train.log_every": STEPS, "train.seed": 2**32 - 1,
    "run.threads": 4096,
}
"""Upper bounds of the numeric settings, each far above any real use."""


def bounds(config: Config) -> list[str]:
    """Upper bounds, finite floats, and the token count of the whole run."""
    p: list[str] = []
    for section in ("model", "data", "train", "run"):
        part = getattr(config, section)
        for f in dataclasses.fields(part):
            key, value = f"{section}.{f.name}", getattr(part, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                p.append(f"`{key}` = {value!r}: must be a finite number. Set it with --set {key}=VALUE.")
            elif key in LIMITS and isinstance(value, int) and value > LIMITS[key]:
                shown = f"{value:,}" if value < 10**15 else f"{value:.3g}"
                p.append(f"`{key}` = {shown}: must be at most {LIMITS[key]:,} (a larger value could not finish "
                         f"or would overflow a counter). Check for a typo, e.g. --set {key}={_typical(key)}.")
    phases = config.data.phases
    if any(isinstance(n, int) and n > STEPS for n in phases):
        p.append(f"`data.phases` = {phases!r}: each phase must be at most {STEPS:,} documents.")
    t, m = config.train, config.model
    steps_tokens = t.max_steps * t.batch_size * m.seq_len
    if t.max_steps <= STEPS and t.batch_size <= LIMITS["train.batch_size"] and steps_tokens > MAX_TOKENS:
        p.append(f"`train.max_steps` = {t.max_steps:,}: with train.batch_size={t.batch_size} and "
                 f"model.seq_len={m.seq_len} the run would train on {steps_tokens:.3g} tokens, more than "
                 f"{MAX_TOKENS:.0e}. Lower train.max_steps, or set train.max_tokens instead.")
    return p


def _typical(key: str) -> str:
    section, name = key.split(".")
    default = next(f.default for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    return str(default if default else 1000)


Need = Callable[[bool, str, str, str], None]
"""need(ok, key, rule, fix): record the problem, with the key's value, when `ok` is false."""


def check(config: Config) -> list[str]:
    """The problems with the ranges and relations of the fields, each naming key, value and fix."""
    p: list[str] = []

    def need(ok: bool, key: str, rule: str, fix: str) -> None:
        if not ok:
            section, name = key.split(".")
            p.append(f"`{key}` = {getattr(getattr(config, section), name)!r}: {rule}. {fix}")

    _model(config.model, need)
    _data(config.data, need)
    _train(config.train, need)
    _run(config.run, need)
    named = {problem.split("`")[1] for problem in p if problem.startswith("`")}
    return p + [b for b in bounds(config) if b.split("`")[1] not in named]


def _model(m: ModelConfig, need: Need) -> None:
    """The rules of the model section."""
    need(m.n_layer >= 1, "model.n_layer", "must be at least 1", "Set --set model.n_layer=6.")
    need(m.n_head >= 1, "model.n_head", "must be at least 1", "Set --set model.n_head=8.")
    need(m.n_embd >= 8, "model.n_embd", "must be at least 8", "Set --set model.n_embd=256.")
    if m.n_head >= 1 and m.n_embd >= 8:
        need(m.n_embd % m.n_head == 0, "model.n_embd", f"must be a multiple of model.n_head={m.n_head}",
             "Change either so that n_embd / n_head is whole.")
        if m.n_embd % m.n_head == 0:
            need(m.head_dim % 2 == 0, "model.n_embd",
                 f"gives an odd head size {m.head_dim}, which rotary positions cannot use",
                 "Make n_embd / n_head even.")
        need(m.n_kv_head >= 0 and (m.n_kv_head == 0 or m.n_head % m.n_kv_head == 0), "model.n_kv_head",
             f"must be 0 or divide model.n_head={m.n_head}", "Set --set model.n_kv_head=0.")
    need(m.intermediate_size >= 0, "model.intermediate_size", "must be 0 or positive",
         "Use 0 for the default of 8/3 x n_embd.")
    need(m.seq_len >= 4, "model.seq_len", "must be at least 4", "Set --set model.seq_len=256.")
    need(m.rope_theta > 0, "model.rope_theta", "must be positive", "The usual value is 10000.")
    need(0 < m.norm_eps < 1, "model.norm_eps", "must be between 0 and 1", "The usual value is 1e-5.")
    need(0 <= m.dropout < 1, "model.dropout", "must be in [0, 1)", "Use 0.0 to disable dropout.")
    need(m.init_std > 0, "model.init_std", "must be positive", "The usual value is 0.02.")
    need(m.pad_vocab_multiple >= 1, "model.pad_vocab_multiple", "must be at least 1", "Use 1 for no padding or 64.")


def _data(d: DataConfig, need: Need) -> None:
    """The rules of the data section."""
    # An empty data.source (the text preset's) is valid configuration: a run without --data fails
    # when it looks for the text, with what to pass.
    need(0 < d.val_fraction <= 0.5, "data.val_fraction", "must be in (0, 0.5]", "The usual value is 0.1.")
    need(d.document_bytes >= 1024, "data.document_bytes", "must be at least 1024", "The default is 65536.")
    need(d.min_chars >= 0, "data.min_chars", "must be 0 or positive",
         "Use 0 to keep every non-empty document, or e.g. 500 to drop stubs.")
    need(d.shard_tokens >= 1024, "data.shard_tokens", "must be at least 1024",
         "The default is 16777216 (32 MB of uint16 ids per shard).")
    need(d.tokenizer in TOKENIZER_TYPES, "data.tokenizer", f"must be one of {', '.join(TOKENIZER_TYPES)}",
         (did_you_mean(d.tokenizer, list(TOKENIZER_TYPES)) or " Pick one of them.").strip())
    need(d.vocab_fit in VOCAB_FITS, "data.vocab_fit", f"must be one of {', '.join(VOCAB_FITS)}",
         (did_you_mean(d.vocab_fit, list(VOCAB_FITS)) or " Pick one of them.").strip())
    need(16 <= d.vocab_size <= 2**31 - 1, "data.vocab_size", "must be at least 16", "Typical values are 4096 to 50304.")
    need(d.character_coverage == 0 or 0.5 < d.character_coverage <= 1.0, "data.character_coverage",
         "must be 0 (chosen from the corpus) or in (0.5, 1]",
         "Use 1.0 for small alphabets, 0.9995 for big ones, or 0 to let the corpus decide.")
    need(all(n >= 1 for n in d.phases) and all(a < b for a, b in zip(d.phases, d.phases[1:])), "data.phases",
         "must be increasing document counts, each at least 1",
         "For example --set data.phases=[100000,1000000] (a last phase of every document follows), or [] for none.")
    need(d.phase_epochs >= 1, "data.phase_epochs", "must be at least 1",
         "Use 1 to move to the next phase after one pass over the current one.")
    need(d.tokenizer_sample_bytes >= 10_000, "data.tokenizer_sample_bytes", "must be at least 10000",
         "The default is 20000000.")


def _train(t: TrainConfig, need: Need) -> None:
    """The rules of the train section."""
    need(t.batch_size >= 1, "train.batch_size", "must be at least 1", "Set --set train.batch_size=32.")
    need(t.micro_batch_size >= 0, "train.micro_batch_size", "must be 0 or positive",
         "Use 0 to run the whole batch at once.")
    if t.batch_size >= 1 and t.micro_batch_size > 0:
        need(t.batch_size % t.micro_batch_size == 0, "train.micro_batch_size",
             f"must divide train.batch_size={t.batch_size}", "Pick a divisor of the batch size.")
    need(t.max_steps >= 0, "train.max_steps", "must be 0 or positive", "Use --max-steps N.")
    need(t.max_tokens >= 0, "train.max_tokens", "must be 0 or positive", "Use --set train.max_tokens=N.")
    need(t.max_time >= 0, "train.max_time", "must be 0 or positive (minutes)", "Use --max-time 30.")
    need(t.lr > 0, "train.lr", "must be greater than 0", "Try --set train.lr=3e-4.")
    need(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]", "The usual value is 0.1.")
    need(t.warmup_steps >= 0, "train.warmup_steps", "must be 0 or positive", "Try 100.")
    need(t.weight_decay >= 0, "train.weight_decay", "must be 0 or positive", "The usual value is 0.1.")
    need(0 <= t.beta1 < 1, "train.beta1", "must be in [0, 1)", "The usual value is 0.9.")
    need(0 <= t.beta2 < 1, "train.beta2", "must be in [0, 1)", "The usual value is 0.95.")
    need(t.eps > 0, "train.eps", "must be positive", "The usual value is 1e-8.")
    need(t.grad_clip >= 0, "train.grad_clip", "must be 0 or positive", "Use 1.0, or 0 to disable.")
    need(t.dtype in DTYPES, "train.dtype", f"must be one of {', '.join(DTYPES)}",
         (did_you_mean(t.dtype, list(DTYPES)) + " Use auto to let localtrain choose.").strip())
    for key in ("eval_every", "sample_every", "checkpoint_every", "early_stop_patience"):
        need(getattr(t, key) >= 0, f"train.{key}", "must be 0 or positive", "Use 0 to disable.")
    need(t.eval_batches >= 1, "train.eval_batches", "must be at least 1", "Try 20.")
    need(t.sample_tokens >= 1, "train.sample_tokens", "must be at least 1", "Try 128.")
    need(t.temperature > 0, "train.temperature", "must be positive", "Try 0.8.")
    need(t.top_k >= 0, "train.top_k", "must be 0 or positive", "Use 0 to sample from all tokens.")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1", "Try 3.")
    need(t.early_stop_min_delta >= 0, "train.early_stop_min_delta", "must be 0 or positive", "Try 0.")
    need(t.best_metric in EVAL_METRICS, "train.best_metric", f"must be one of {', '.join(EVAL_METRICS)}",
         (did_you_mean(t.best_metric, list(EVAL_METRICS)) + " The default is val_loss.").strip())
    need(t.log_every >= 1, "train.log_every", "must be at least 1", "Try 10.")
    need(t.seed >= 0, "train.seed", "must be 0 or positive", "Use --seed N.")
    need(not (t.early_stop_patience and not t.eval_every), "train.early_stop_patience",
         "stops on evaluations, but train.eval_every = 0 runs none",
         "Set --set train.eval_every=250 or disable early stopping.")


def _run(r: RunConfig, need: Need) -> None:
    """The rules of the run section."""
    need(r.device in DEVICES, "run.device", f"must be one of {', '.join(DEVICES)}",
         (did_you_mean(r.device, list(DEVICES)) + " Use --device cpu|cuda|mps|auto.").strip())
    need(r.backend in BACKENDS, "run.backend", f"must be one of {', '.join(BACKENDS)}", "Use --set run.backend=torch.")
    need(r.threads >= 0, "run.threads", "must be 0 or positive", "Use 0 for all cores.")
    if r.memory_budget != "auto":
        try:
            ok = parse_size(r.memory_budget) > 0
        except ValueError:
            ok = False
        need(ok, "run.memory_budget", "must be auto or a size such as 6GB or 512MB",
             "Use --set run.memory_budget=auto.")
    need(r.compile in SWITCHES, "run.compile", f"must be one of {', '.join(SWITCHES)}", "Use --set run.compile=auto.")
    need(r.autotune in ("auto", "off"), "run.autotune", "must be auto or off", "Use --set run.autotune=auto.")
    need(r.parallel in PARALLELS, "run.parallel", f"must be one of {', '.join(PARALLELS)}",
         (did_you_mean(r.parallel, list(PARALLELS)) + " Use --set run.parallel=auto.").strip())
    need(not (r.parallel == "fsdp" and r.backend == "mlx"), "run.parallel",
         "shards the model with PyTorch's FSDP, which the mlx backend does not have",
         "Use --backend torch, or --set run.parallel=auto.")
