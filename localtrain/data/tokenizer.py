"""The sentencepiece tokenizer: training it so text round-trips exactly, and using it.

Every setting below serves one promise: `decode(encode(text)) == text` for code and
prose alike. No normalisation, no dummy prefix, runs of spaces kept, newlines a token
of their own, and (for bpe/unigram) bytes for characters outside the vocabulary.

The character coverage, unless set, is chosen from the sample (`choose_coverage`):
Chinese, Japanese or Korean text has thousands of characters, and the rarest are better
spelled in bytes than given a piece each; a small alphabet is covered whole.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from localtrain.config import DataConfig
from localtrain.data.text import cut_text
from localtrain.errors import DataError
from localtrain.events import Emit, Prepare, Warning

SPECIAL_PIECES = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
NEWLINE = "\n"
SPACE_PIECE = "\u2581"  # ▁, sentencepiece's stand-in for a space
# The trainer drops any sentence holding this character (its internal unknown marker).
TRAINER_UNK_CHAR = "\u2585"
CHUNK_BYTES = 4096
SHRINK_RETRIES = 4
# Coverage chosen from the sample when data.character_coverage is 0 (the values sentencepiece
# recommends): text where Han, kana or Hangul make up CJK_SHARE of the characters, or a sample
# of more distinct characters than SMALL_ALPHABET, gets LARGE_ALPHABET_COVERAGE; a small
# alphabet is covered whole.
CJK_SHARE = 0.1
SMALL_ALPHABET = 512
LARGE_ALPHABET_COVERAGE = 0.9995
SMALL_ALPHABET_COVERAGE = 1.0
# Han (with extensions and compatibility forms), kana, Bopomofo and Hangul.
_CJK = ((0x1100, 0x11FF), (0x2E80, 0x2FDF), (0x3040, 0x30FF), (0x3100, 0x312F), (0x3130, 0x318F),
        (0x31A0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7FF),
        (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x20000, 0x3134F))

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class Tokenizer:
    """A trained sentencepiece model; ids 0, 1, 2 are <unk>, <s>, </s>.

    `character_coverage` is the coverage it was trained at, when it was trained here (None when loaded).
    """

    def __init__(self, model: bytes, character_coverage: float | None = None) -> None:
        self.model_bytes = bytes(model)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        self.character_coverage = character_coverage
        # The model never changes after loading: its figures are read once.
        self.vocab_size: int = self._sp.get_piece_size()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        self.unk_id: int = self._sp.unk_id()
        self.sha256 = hashlib.sha256(self.model_bytes).hexdigest()

    @classmethod
    def load(cls, path: Path | str) -> Tokenizer:
        """Read a `tokenizer.model` file."""
        return cls(Path(path).read_bytes())

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS or EOS."""
        return self._sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def pieces(self) -> list[str]:
        """Every piece, indexed by id."""
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (int32, one per id), for bits-per-byte.

        A byte piece `<0xNN>` is 1, control and unknown pieces are 0, `▁` is one space.
        """
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if self._sp.is_control(i) or self._sp.is_unknown(i):
                continue
            piece = self._sp.id_to_piece(i).replace(SPACE_PIECE, " ")
            out[i] = 1 if self._sp.is_byte(i) else len(piece.encode("utf-8"))
        return out


def trainer_sentences(sample: list[str]) -> list[str]:
    """The sample as the sentences fed to the trainer: pieces of at most ~4 KB cut at line breaks."""
    # The trainer would silently drop a whole chunk holding its marker character: it is split there.
    return [piece for text in sample for chunk in cut_text(text, CHUNK_BYTES)
            for piece in chunk.split(TRAINER_UNK_CHAR) if piece]


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK)


def choose_coverage(sentences: list[str], data: DataConfig) -> tuple[float, str]:
    """The character coverage for a sample when data.character_coverage is 0 (chosen from the
    corpus), and why: LARGE_ALPHABET_COVERAGE for CJK-heavy text or a large alphabet (for
    bpe/unigram: more characters than a quarter of the vocabulary), else 1.0."""
    counts = collections.Counter("".join(sentences))
    letters = sum(n for c, n in counts.items() if not c.isspace())
    cjk = sum(n for c, n in counts.items() if _is_cjk(c))
    distinct = len(counts)
    small = SMALL_ALPHABET if data.tokenizer == "char" else min(SMALL_ALPHABET, data.vocab_size // 4)
    if letters and cjk >= CJK_SHARE * letters:
        return LARGE_ALPHABET_COVERAGE, (f"chosen from the sample: CJK-heavy, {cjk / letters:.0%} of its characters "
                                         f"are Han, kana or Hangul, {distinct:,} distinct characters")
    if distinct > small:
        return LARGE_ALPHABET_COVERAGE, (f"chosen from the sample: {distinct:,} distinct characters, more than "
                                         f"{small}; the rarest are spelled in bytes")
    return SMALL_ALPHABET_COVERAGE, f"chosen from the sample: a small alphabet of {distinct} characters"


def required_chars(sentences: list[str], coverage: float) -> list[str]:
    """The characters a vocabulary needs to cover `coverage` of the sample, most frequent first.

    The same rule as sentencepiece's trainer: sort by count (then code point) and take
    the shortest prefix whose count reaches the coverage, compared in float32 as it does.
    """
    counts = collections.Counter(itertools.chain.from_iterable(sentences))
    if " " in counts:
        counts[SPACE_PIECE] += counts.pop(" ")
    total = sum(counts.values())
    need: list[str] = []
    covered = 0
    target = np.float32(coverage)
    for char, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if total and np.float32(covered / total) >= target:
            break
        covered += count
        need.append(char)
    return need


def _settings(data: DataConfig, vocab_size: int) -> dict[str, Any]:
    char = data.tokenizer == "char"
    return dict(
        model_type=data.tokenizer,
        vocab_size=vocab_size,
        character_coverage=data.character_coverage,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_by_whitespace=True,
        user_defined_symbols=[NEWLINE],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=not char,
        hard_vocab_limit=not char,
        max_sentence_length=4 * CHUNK_BYTES,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )


def tokenizer_settings(data: DataConfig) -> dict[str, Any]:
    """The trainer settings recorded in the prepared data's meta.json (vocab size apart)."""
    dropped = ("vocab_size", "num_threads", "minloglevel")
    return {k: v for k, v in _settings(data, data.vocab_size).items() if k not in dropped}


def _train(sentences: list[str], settings: dict[str, Any]) -> bytes:
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=writer, **settings)
    return writer.getvalue()


def _train_char(sentences: list[str], data: DataConfig) -> Tokenizer:
    need = required_chars(sentences, data.character_coverage)
    alphabet = set(need) | {NEWLINE}
    tok = Tokenizer(_train(sentences, _settings(data, len(alphabet) + len(SPECIAL_PIECES))), data.character_coverage)
    got = set(tok.pieces()) - set(SPECIAL_PIECES)
    if got != alphabet:
        raise RuntimeError(
            f"sentencepiece built a char vocabulary of {len(got)} characters, not the {len(alphabet)} "
            f"the sample needs at coverage {data.character_coverage}: missing {sorted(alphabet - got)[:10]}, "
            f"extra {sorted(got - alphabet)[:10]}."
        )
    return tok


def _train_subword(sentences: list[str], data: DataConfig, emit: Emit) -> Tokenizer:
    asked = vocab_size = data.vocab_size
    for _ in range(SHRINK_RETRIES + 1):
        try:
            return Tokenizer(_train(sentences, _settings(data, vocab_size)), data.character_coverage)
        except RuntimeError as exc:
            message = str(exc)
            small = _TOO_SMALL.search(message)
            if small:
                raise DataError(
                    f"data.vocab_size = {small.group(1)} is smaller than the {small.group(2)} pieces a "
                    f"{data.tokenizer} tokenizer needs for this corpus (its special pieces, the 256 byte "
                    f"pieces and the characters that cover {data.character_coverage} of the text). Set "
                    f"--set data.vocab_size={small.group(2)} or more, or lower data.character_coverage."
                ) from exc
            high = _TOO_HIGH.search(message)
            if not high:
                raise DataError(
                    f"sentencepiece could not train a {data.tokenizer} tokenizer with data.vocab_size = "
                    f"{vocab_size} on the sample: {message.strip()}. Check the data source, or try "
                    f"another --set data.tokenizer."
                ) from exc
            largest = int(high.group(2))
            if data.vocab_fit == "exact":
                raise DataError(
                    f"data.vocab_size = {asked} is too large for this corpus: the {data.tokenizer} trainer "
                    f"supports at most {largest} pieces on this text, and data.vocab_fit = exact. Set --set "
                    f"data.vocab_size={largest} or less, give more text, or --set data.vocab_fit=shrink."
                ) from exc
            emit(Warning(
                message=f"The tokenizer vocabulary shrinks from {vocab_size} to {largest} pieces: this corpus "
                f"is too small for {vocab_size} {data.tokenizer} pieces (data.vocab_fit = shrink). Set --set "
                f"data.vocab_size={largest} to silence this, --set data.vocab_fit=exact to stop instead, or "
                f"give more text.",
                code="vocab_shrunk",
            ))
            vocab_size = largest
    raise DataError(
        f"sentencepiece kept asking for a smaller vocabulary than data.vocab_size = {vocab_size} after "
        f"{SHRINK_RETRIES} retries. Set --set data.vocab_size to a smaller value, or give more text."
    )


def train_tokenizer(sample: list[str], data: DataConfig, emit: Emit) -> Tokenizer:
    """Train a `data.tokenizer` model on `sample`; emit a `Prepare(stage="tokenizer")` event.

    For bpe/unigram, a vocab_size that the corpus cannot fill shrinks with a warning, or
    raises DataError under data.vocab_fit = exact. A char
    vocabulary is exactly the characters needed at `data.character_coverage`;
    data.character_coverage 0 is chosen from the sample (`choose_coverage`).
    """
    start = time.perf_counter()
    sentences = trainer_sentences(sample)
    if not sentences:
        raise DataError(
            "The tokenizer sample is empty, so no tokenizer can be trained. Give the data source some text."
        )
    why = "set in the configuration"
    if not data.character_coverage:
        coverage, why = choose_coverage(sentences, data)
        data = dataclasses.replace(data, character_coverage=coverage)
    tok = _train_char(sentences, data) if data.tokenizer == "char" else _train_subword(sentences, data, emit)
    seconds = time.perf_counter() - start
    sample_bytes = sum(len(s.encode("utf-8")) for s in sample)
    emit(Prepare(
        stage="tokenizer",
        message=f"Trained a {data.tokenizer} tokenizer of {tok.vocab_size} pieces on {sample_bytes:,} bytes "
        f"in {seconds:.1f}s, character coverage {data.character_coverage:g} ({why}).",
        bytes=sample_bytes,
        seconds=seconds,
    ))
    return tok
