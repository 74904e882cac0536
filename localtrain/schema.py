"""The configuration's schema: the model / data / train / run dataclasses and their fields.

Every field carries a docstring; the same text is the help shown by the CLI and the
dashboard (`field_docs`). Loading presets, applying overrides and validation live in
`localtrain.config`, which every caller uses.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

TOKENIZER_TYPES = ("bpe", "unigram", "char")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
BACKENDS = ("auto", "torch", "mlx")
SWITCHES = ("auto", "on", "off")
PARALLELS = ("auto", "ddp", "fsdp")
VOCAB_FITS = ("shrink", "exact")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of the Llama-style decoder."""

    n_layer: int = 6
    """Number of transformer blocks."""
    n_head: int = 8
    """Number of attention heads; must divide `n_embd`."""
    n_kv_head: int = 0
    """Key/value heads for grouped-query attention; 0 means one per attention head."""
    n_embd: int = 256
    """Width of the residual stream (hidden size)."""
    intermediate_size: int = 0
    """Hidden width of the SwiGLU feed-forward; 0 means 8/3 of `n_embd` rounded up to 32."""
    seq_len: int = 256
    """Context length in tokens: the length of every training sequence."""
    rope_theta: float = 10000.0
    """Base of the rotary position frequencies."""
    norm_eps: float = 1e-5
    """Epsilon inside RMSNorm."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches while training (0 disables)."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of weight matrices."""
    pad_vocab_multiple: int = 64
    """Embedding rows are padded to a multiple of this for faster matmuls (1 disables)."""

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ffn_size(self) -> int:
        if self.intermediate_size:
            return self.intermediate_size
        # As many weights as a 4x GELU MLP, rounded to a multiple of 32 for the matmuls.
        return -(-(8 * self.n_embd) // (3 * 32)) * 32

    def vocab_rows(self, vocab_size: int) -> int:
        """Rows of the embedding: the vocabulary padded up to a multiple of pad_vocab_multiple."""
        m = self.pad_vocab_multiple
        return -(-vocab_size // m) * m


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes tokens."""

    source: str = "python-stdlib"
    """A named source (python-stdlib, tinyshakespeare, wikitext-103, enwiki) or a path to a file or directory."""
    include: list[str] = field(default_factory=list)
    """Glob patterns (relative to a directory source) of files to read; empty reads every text file."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of files or directories to skip inside a directory source."""
    val_fraction: float = 0.1
    """Share of the corpus bytes held out for validation, chosen by document."""
    document_bytes: int = 65536
    """A file longer than this is cut at line breaks into documents of about this size for the split."""
    tokenizer: str = "bpe"
    """Sentencepiece model type: bpe, unigram or char."""
    vocab_size: int = 4096
    """Tokenizer vocabulary size for bpe/unigram (a char vocabulary is sized by the corpus)."""
    vocab_fit: str = "shrink"
    """A corpus too small for data.vocab_size pieces: shrink (train the largest vocabulary it supports, with a
    warning) or exact (stop with an error). Wherever the value was set, it means the same."""
    character_coverage: float = 0.0
    """Share of the sample's characters the vocabulary must cover; rarer characters become bytes or <unk>.
    0 chooses from the corpus: 0.9995 for Chinese, Japanese or Korean text or a large alphabet, 1.0 for a small one."""
    tokenizer_sample_bytes: int = 20_000_000
    """Upper bound on the bytes of text the tokenizer is trained on (a reproducible sample)."""
    cache_dir: str = ""
    """Where prepared token files are cached; empty means $LOCALTRAIN_CACHE or ~/.cache/localtrain."""
    min_chars: int = 0
    """Documents shorter than this many characters after cleaning are dropped (0 keeps every non-empty one)."""
    shard_tokens: int = 16_777_216
    """Tokens per shard file of the prepared data (the last shard of a split holds the rest)."""
    phases: list[int] = field(default_factory=list)
    """Progressive phases: kept-document counts at which phases end, e.g. [100000, 1000000]; a last
    phase holds every document. Training starts on phase 1 while later phases are prepared."""
    phase_epochs: int = 1
    """Epochs over a phase's training tokens before training moves on to the next phase."""


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: batch, schedule, stopping, evaluation, samples and checkpoints."""

    batch_size: int = 32
    """Sequences per optimizer step (micro_batch_size x grad_accum_steps)."""
    micro_batch_size: int = 0
    """Sequences per forward/backward pass; 0: chosen by the planner (the fastest measured that fits)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: use max_tokens)."""
    max_tokens: int = 0
    """Stop after this many training tokens (0 with max_steps 0: 20 tokens per parameter)."""
    max_time: float = 0.0
    """Stop after this many minutes of training in this process (0: no limit)."""
    lr: float = 3e-4
    """Peak learning rate, reached after warmup."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at this fraction of the peak learning rate."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to the peak learning rate."""
    weight_decay: float = 0.1
    """Decoupled AdamW weight decay on weight matrices (never on norms or embeddings)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    dtype: str = "auto"
    """Compute dtype: auto, float32, bfloat16 or float16 (auto: the fastest measured on this machine, see run.autotune)."""
    eval_every: int = 250
    """Evaluate on the validation split every this many steps (0 disables)."""
    eval_batches: int = 20
    """Micro-batches of validation data per evaluation."""
    sample_every: int = 250
    """Generate live samples every this many steps (0 disables)."""
    sample_prompts: list[str] = field(default_factory=lambda: ["\n"])
    """Prompts the live samples continue."""
    sample_tokens: int = 128
    """Tokens generated per live sample."""
    temperature: float = 0.8
    """Sampling temperature for live samples."""
    top_k: int = 50
    """Sample only among the k most likely tokens (0: all)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (one is also written at the end and on interrupt)."""
    keep_checkpoints: int = 3
    """Keep this many newest checkpoints; older ones are deleted (best/ is kept apart)."""
    early_stop_patience: int = 0
    """Stop after this many evaluations without a better train.best_metric (0 disables)."""
    early_stop_min_delta: float = 0.0
    """train.best_metric must improve by more than this (in its units) to count as better."""
    best_metric: str = "val_loss"
    """The eval metric that picks best/ and drives early stopping: val_loss, val_ppl, val_bpb or val_word_ppl (lower is better; early_stop_min_delta is in its units)."""
    log_every: int = 10
    """Steps between plain log lines on a non-terminal console."""
    seed: int = 1337
    """Seed for initialisation, data order, dropout and samples."""


@dataclass(frozen=True)
class RunConfig:
    """Where the run lives and what it runs on."""

    preset: str = "python-stdlib"
    """The preset this configuration started from."""
    run_dir: str = ""
    """The run directory; empty means runs/<data or preset>-<date-time> (the data when --data chose it)."""
    device: str = "auto"
    """cpu, cuda, mps or auto (the best available)."""
    backend: str = "auto"
    """Training framework: torch (cpu, cuda, mps), mlx, or auto (MLX on Apple silicon when installed, else torch)."""
    threads: int = 0
    """CPU threads for the torch backend (0: all cores)."""
    memory_budget: str = "auto"
    """Memory the run may use, e.g. 6GB; auto: free GPU memory, the unified-memory working set, or available RAM minus headroom."""
    compile: str = "auto"
    """torch.compile the training step: on, off, or auto (the tuner times both where compiling is supported)."""
    autotune: str = "auto"
    """auto: time a few real steps of each dtype, compile and micro-batch candidate on this machine and pick
    the fastest whole run (measured once per machine and shape, then cached); off: float32 on a CPU (mixed
    precision on a GPU), compile on CUDA only, the largest micro-batch that fits. Explicit settings always win."""
    parallel: str = "auto"
    """How the processes of `--nproc N` share the model: ddp (each holds all weights, gradients and AdamW moments), fsdp (each holds 1/N of them, gathering one block at a time), or auto (fsdp only when the model does not fit one device under ddp but does sharded)."""
    overrides: list[str] = field(default_factory=list)
    """The command-line overrides this run was started with, as key=value."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that shapes the trained model (model, data and train sections)."""
        return self._hash("model", "data", "train")

    def model_fingerprint(self) -> str:
        """Hash of what a checkpoint's tensors depend on: the model shape and the data/tokenizer."""
        return self._hash("model", "data")

    def _hash(self, *sections: str) -> str:
        # Fields added later are left out at their LATER_DEFAULTS, so a run from before them still resumes.
        d = self.to_dict()
        payload = json.dumps({s: {name: value for name, value in d[s].items()
                                  if name not in LATER_DEFAULTS.get(s, {}) or LATER_DEFAULTS[s][name] != value}
                              for s in sections}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "run": RunConfig,
}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass, read from its source."""
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    return {
        node.target.id: nxt.value.value.strip()
        for node, nxt in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)
    }


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


LATER_DEFAULTS = {"data": {"phases": [], "phase_epochs": 1, "vocab_fit": "shrink"}}
"""Fields added after runs were first written: at these values they are left out of fingerprints, so a
run started before they existed still resumes."""
