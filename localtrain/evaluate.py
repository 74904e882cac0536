"""`localtrain eval RUN --data TEXT`: loss, perplexity, bits per byte and word perplexity.

    localtrain eval runs/NAME --data notes.txt
    localtrain eval runs/NAME --checkpoint best --data wikitext-2-test --json
    localtrain eval runs/NAME --data split:val --stride 128
    localtrain eval runs/NAME --samples 20          # sample quality only

The text is scored as one document: the end-of-document token stands before it as
context, so every one of its tokens is predicted and every one of its UTF-8 bytes is
counted. A text longer than the context is scored in sliding windows: windows of
model.seq_len tokens begin every `stride` tokens (the last one ends at the last token),
and each token is scored once, in the first window that holds it, so each token after
the first window sees at least seq_len - stride tokens of context. docs/metrics.md has
every formula.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from localtrain import metrics, quality
from localtrain.errors import CheckpointError, DataError, LocaltrainError
from localtrain.evaltext import NAMED_TEXTS, read_text, text_path
from localtrain.flags import add_model_flags

TokenLosses = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""A backend's `token_losses(x, y)`: nats of each target in y given x, both (B, T)."""

SPLIT_PREFIX = "split:"
PROSE_WORDS = "per word of prose under the WikiText convention (whitespace-separated words and line ends)"
CODE_WORDS = ("per whitespace-separated word of code (and line end): not comparable with published word-level"
              " perplexities, which are measured on prose")
BATCH_TOKENS = 8192
"""Tokens scored per backend call: the logits of this many tokens are alive at once."""


# -- counting ---------------------------------------------------------------------------


def count_words(text: str, after: str | None = None) -> int:
    """Words under the WikiText convention: whitespace-separated words plus one per line end.

    Each "\\n" counts as one word (the end-of-line marker word-level models predict).
    `after` is the character just before `text` (None: the text starts a document); a
    word that began before the text is not counted again.
    """
    n = len(text.split()) + text.count("\n")
    if text and not text[0].isspace() and after is not None and not after.isspace():
        n -= 1
    return n


def token_words(ids: np.ndarray, context_id: int, decode: Callable[[list[int]], str], eos_id: int) -> int:
    """Words (count_words) in the text of the tokens `ids`, which follow the token `context_id`.

    End-of-document tokens split the ids: each piece after one starts a document.
    """
    pieces: list[list[int]] = [[]]
    for t in ids.tolist():
        if t == eos_id:
            pieces.append([])
        else:
            pieces[-1].append(int(t))
    before = None if context_id == eos_id else (decode([int(context_id)])[-1:] or None)
    return sum(count_words(decode(piece), before if i == 0 else None) for i, piece in enumerate(pieces) if piece)


# -- scoring ----------------------------------------------------------------------------


def windows(targets: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) per window: inputs ids[begin:end], targets ids[begin+1:end+1],
    of which targets first..end-1 (indices into ids[1:]) are scored in this window."""
    out: list[tuple[int, int, int]] = []
    begin = scored = 0
    while scored < targets:
        end = min(begin + seq_len, targets)
        if end == targets:
            begin = max(0, targets - seq_len)
        out.append((begin, end, scored))
        scored = end
        begin += stride
    return out


def score_tokens(token_losses: TokenLosses, ids: np.ndarray, seq_len: int, stride: int) -> np.ndarray:
    """Nats (float64) of each of ids[1:], predicted from up to seq_len tokens before it."""
    if not 1 <= stride <= seq_len:
        raise LocaltrainError(
            f"--stride {stride}: use a stride between 1 and the model's context of {seq_len} tokens"
            f" (e.g. {max(1, seq_len // 2)})."
        )
    ids = np.asarray(ids, dtype=np.int64)
    plan = windows(len(ids) - 1, seq_len, stride)
    nats = np.empty(len(ids) - 1, dtype=np.float64)
    batch = max(1, BATCH_TOKENS // seq_len)
    for i in range(0, len(plan), batch):
        group = plan[i : i + batch]
        # Every window is seq_len long, unless the whole text is shorter than that.
        x = np.stack([ids[b:e] for b, e, _ in group])
        y = np.stack([ids[b + 1 : e + 1] for b, e, _ in group])
        losses = np.asarray(token_losses(x, y), dtype=np.float64)
        for row, (b, e, first) in enumerate(group):
            nats[first:e] = losses[row, first - b :]
    return nats


@dataclass
class Figures:
    """The evaluation of one text: what was counted and the figures derived from it."""

    data: str
    tokens: int
    """Tokens scored (every token of the text; none is left as unpredicted context)."""
    bytes: int
    """UTF-8 bytes of the scored text."""
    words: int
    """Whitespace-separated words plus one per line end (the WikiText convention)."""
    total_nats: float
    loss: float
    """Mean nats per token."""
    ppl: float
    bpb: float
    word_ppl: float
    seq_len: int
    stride: int
    unknown_tokens: int = 0
    """Tokens the tokenizer could only write as <unk>: their bytes are counted, the model scored <unk>."""
    checkpoint: str = ""
    step: int | None = None
    seconds: float = 0.0
    samples: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    word_ppl_note: str = PROSE_WORDS
    """What word_ppl is per: words of prose (comparable with published word-level figures) or of code (not)."""


def figures(name: str, nats: np.ndarray, nbytes: int, words: int, seq_len: int, stride: int) -> Figures:
    total = float(nats.sum())
    loss = total / len(nats)
    return Figures(
        data=name, tokens=len(nats), bytes=nbytes, words=words, total_nats=total, loss=loss,
        ppl=metrics.perplexity(loss), bpb=metrics.bits_per_byte(total, nbytes),
        word_ppl=metrics.perplexity(total / words) if words else float("nan"), seq_len=seq_len, stride=stride,
    )


def evaluate_text(token_losses: TokenLosses, tokenizer: Any, text: str, seq_len: int, stride: int,
                  name: str = "text") -> Figures:
    """Score `text` as one document (the end-of-document token as its context)."""
    if not text:
        raise DataError(f"{name} is empty: there is no text to score. Give a file with some text in it.")
    ids = tokenizer.encode(text)
    nats = score_tokens(token_losses, np.array([tokenizer.eos_id, *ids]), seq_len, stride)
    result = figures(name, nats, len(text.encode("utf-8")), count_words(text), seq_len, stride)
    result.unknown_tokens = sum(1 for t in ids if t == tokenizer.unk_id)
    if result.unknown_tokens:
        result.warnings.append(
            f"{result.unknown_tokens} of the {len(ids)} tokens are <unk>: the tokenizer has no piece for some"
            " characters of this text. Their bytes are counted but the model only scored <unk>, so the figures"
            " are lower than the text deserves."
        )
    return result


def evaluate_tokens(token_losses: TokenLosses, tokenizer: Any, tokens: np.ndarray, seq_len: int, stride: int,
                    name: str) -> Figures:
    """Score a prepared split: documents each followed by the end-of-document token."""
    ids = np.concatenate([[tokenizer.eos_id], np.asarray(tokens, dtype=np.int64)])
    if len(ids) < 2:
        raise DataError(f"{name} holds no tokens, so there is nothing to score. Prepare the run's data again.")
    nats = score_tokens(token_losses, ids, seq_len, stride)
    token_bytes = tokenizer.token_bytes()
    nbytes = int(token_bytes[ids[1:]].sum())
    words = token_words(ids[1:], tokenizer.eos_id, tokenizer.decode, tokenizer.eos_id)
    return figures(name, nats, nbytes, words, seq_len, stride)


# -- the command ------------------------------------------------------------------------


def _eval_split(source: Any, tokenizer: Any, backend: Any, spec: str, stride: int) -> Figures:
    from localtrain.data.prepare import prepare

    split = spec[len(SPLIT_PREFIX):]
    if split not in ("train", "val"):
        raise DataError(f"--data {spec}: name a prepared split as split:val or split:train.")
    run = source.run_config
    if run is None:
        raise DataError(f"--data {spec}: {source.origin} is an export, which keeps no data configuration. Give a"
                        " text file instead, or evaluate the run directory.")
    prepared = prepare(run.data, lambda event: None)
    if prepared.tokenizer_sha256 != tokenizer.sha256:
        raise CheckpointError(
            f"--data {spec}: the data prepared now ({prepared.dir}) has another tokenizer than {source.origin}"
            " (did the source files change?), so its token ids would mean other text. Evaluate a text file instead."
        )
    return evaluate_tokens(backend.token_losses, tokenizer, prepared.load(split), source.model.seq_len, stride,
                           f"{run.data.source} ({split} split)")


def _samples(source: Any, count: int, backend: Any, seed: int) -> dict[str, Any]:
    from localtrain.sample import Settings, sample

    run = source.run_config
    train = run.train if run is not None else None
    prompts = list(train.sample_prompts) if train is not None else ["\n"]
    per_prompt = -(-count // len(prompts))
    settings = Settings(
        max_tokens=train.sample_tokens if train else 128, temperature=train.temperature if train else 0.8,
        top_k=train.top_k if train else 50, seed=seed, num_samples=per_prompt,
    )
    records = sample(source, prompts, settings, backend.name, model=backend)
    # Records come prompt by prompt; take them round-robin so every prompt is represented.
    order = sorted(range(len(records)), key=lambda i: (i % per_prompt, i // per_prompt))[:count]
    code = run is not None and quality.is_code(run.data)
    qualities = [quality.sample_quality(records[i]["text"], code, records[i]["prompt"]) for i in order]
    return quality.summarize(qualities)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run directory, one of its checkpoint directories, or an export")
    from localtrain.weights import CHECKPOINT_HELP

    p.add_argument("--checkpoint", default=None, metavar="best|latest|step-N", help=CHECKPOINT_HELP)
    p.add_argument("--data", metavar="PATH|NAME|split:val",
                   help="the text to score: a UTF-8 file, a named text (" + ", ".join(NAMED_TEXTS)
                   + "; found under $LOCALTRAIN_DATA), or the run's prepared split:val / split:train")
    p.add_argument("--stride", type=int, default=0, metavar="N",
                   help="tokens between sliding windows (default half the context; the context itself for"
                   " non-overlapping windows)")
    p.add_argument("--samples", type=int, default=0, metavar="N",
                   help="also generate N samples with the run's sampling settings and report their quality")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample")
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_eval(args: argparse.Namespace) -> Figures | dict[str, Any]:
    """The evaluation `args` asks for: Figures for --data (samples inside), or the samples' summary alone."""
    from localtrain.data.tokenizer import Tokenizer
    from localtrain.weights import load_source
    from localtrain.sample import build_backend

    if not args.data and not args.samples:
        raise LocaltrainError("Nothing to evaluate: give --data PATH|NAME|split:val, --samples N, or both.")
    if args.samples < 0:
        raise LocaltrainError(f"--samples {args.samples}: give a number of samples, e.g. --samples 20.")
    source = load_source(Path(args.run), args.checkpoint, use="evaluated")
    tokenizer = Tokenizer.load(source.tokenizer_path)
    if tokenizer.vocab_size != source.vocab_size:
        raise CheckpointError(
            f"{source.tokenizer_path} has {tokenizer.vocab_size} pieces but {source.origin} was trained on"
            f" {source.vocab_size}: it is not the checkpoint's tokenizer. Restore the tokenizer it was trained with."
        )
    stride = args.stride or max(1, source.model.seq_len // 2)
    step = _step_of(source.origin)
    start = time.perf_counter()
    backend = build_backend(source, args.backend, args.device, args.dtype)  # one load serves samples and scoring
    samples = _samples(source, args.samples, backend, args.seed) if args.samples else None
    if not args.data:
        return {"checkpoint": str(source.origin), "step": step, "samples": samples}
    if args.data.startswith(SPLIT_PREFIX):
        result = _eval_split(source, tokenizer, backend, args.data, stride)
    else:
        path = text_path(args.data)
        result = evaluate_text(backend.token_losses, tokenizer, read_text(path), source.model.seq_len, stride,
                               str(path))
    result.checkpoint, result.step, result.samples = str(source.origin), step, samples
    if _scores_code(source, args.data):
        result.word_ppl_note = CODE_WORDS
    result.seconds = time.perf_counter() - start
    return result


def _scores_code(source: Any, spec: str) -> bool:
    """Whether the scored text is source code: a code file, or a code run's own split."""
    from localtrain.data.text import is_code_file

    if spec.startswith(SPLIT_PREFIX):
        return source.run_config is not None and quality.is_code(source.run_config.data)
    return is_code_file(spec)


def _step_of(origin: Path) -> int | None:
    try:
        return int(json.loads((origin / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _print_samples(s: dict[str, Any]) -> None:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    print(f"samples            {s['samples']}")
    print(f"repetition ratio   {pct(s['repetition_ratio'])}")
    print(f"distinct-1 / -2    {num(s['distinct_1'])} / {num(s['distinct_2'])}")
    print(f"mode collapse      {pct(s['collapse_rate'])}")
    chars = "-" if s["unique_chars"] is None else f"{s['unique_chars']:.1f}"
    print(f"unique characters  {chars} per sample")
    if s["keyword_rate"] is not None:
        print(f"Python keywords    {pct(s['keyword_rate'])} of samples")
        print(f"parses (ast)       {pct(s['parse_rate'])} of samples")


def main(args: argparse.Namespace) -> int:
    result = run_eval(args)
    if isinstance(result, dict):
        if args.json:
            print(json.dumps(result, allow_nan=False))
        else:
            print(f"checkpoint         {result['checkpoint']}")
            _print_samples(result["samples"])
        return 0
    if args.json:
        obj = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(result).items()}
        print(json.dumps(obj, allow_nan=False))
        return 0
    for w in result.warnings:
        print(f"warning: {w}")
    print(f"checkpoint         {result.checkpoint}" + (f" (step {result.step})" if result.step is not None else ""))
    print(f"data               {result.data}")
    print(f"counted            {result.tokens:,} tokens, {result.bytes:,} bytes, {result.words:,} words")
    print(f"loss               {result.loss:.4f} nats/token (perplexity {result.ppl:.2f})")
    print(f"bits per byte      {result.bpb:.4f}")
    print(f"word perplexity    {result.word_ppl:.2f} ({result.word_ppl_note})")
    print(f"windows            {result.seq_len} tokens, stride {result.stride} ({result.seconds:.1f}s)")
    if result.samples is not None:
        _print_samples(result.samples)
    return 0
