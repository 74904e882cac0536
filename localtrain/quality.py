"""Sample quality: how repetitive, diverse and (for code) how valid generated text is.

Every metric reads the text alone, never its token ids, so the figures of a character
model and of a bpe model mean the same thing. docs/metrics.md gives each formula.

- repetition ratio: the share of the sample's character 4-grams that repeat an earlier one
- distinct-1 / distinct-2: distinct word unigrams / bigrams over all of them
- mode collapse: one n-gram repeated back to back covers at least half the sample
- unique characters per sample
- for code: whether a sample holds a Python keyword, and whether it parses with `ast`
"""

from __future__ import annotations

import ast
import keyword
import re
import statistics
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from localtrain.config import DataConfig

REPETITION_N = 4
"""The repetition ratio counts character n-grams of this length."""
COLLAPSE_SHARE = 0.5
"""A sample is collapsed when one back-to-back repeated n-gram covers this share of it."""
COLLAPSE_MAX_PERIOD = 32
"""The longest repeating n-gram (in characters) the collapse test looks for."""
COLLAPSE_MIN_REPEATS = 3
"""A repeat counts only when its n-gram occurs at least this many times in a row."""

# Words, numbers and identifiers, and each punctuation mark on its own.
_UNIT = re.compile(r"\w+|[^\w\s]")
_KEYWORDS = frozenset(keyword.kwlist)


def units(text: str) -> list[str]:
    """The text's words: runs of letters, digits and underscores, and single punctuation marks."""
    return _UNIT.findall(text)


def _ngrams(seq: Any, n: int) -> list[Any]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def repetition_ratio(text: str, n: int = REPETITION_N) -> float:
    """1 - distinct / total over the text's character n-grams; 0 when it has none."""
    grams = _ngrams(text, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(text: str, n: int) -> float | None:
    """Distinct word n-grams / all word n-grams; None when the text has fewer than n words."""
    grams = _ngrams(units(text), n)
    return len(set(grams)) / len(grams) if grams else None


def longest_repeat(text: str, max_period: int = COLLAPSE_MAX_PERIOD) -> tuple[int, int]:
    """(characters covered, period) of the longest stretch that is one n-gram repeated back to back.

    A stretch of period p is text[i : j] with text[k] == text[k + p] for i <= k < j - p,
    holding at least COLLAPSE_MIN_REPEATS copies of its n-gram. (0, 0) when there is none.
    """
    best = (0, 0)
    size = len(text)
    for p in range(1, min(max_period, size // COLLAPSE_MIN_REPEATS) + 1):
        run = 0
        for k in range(size - p):
            run = run + 1 if text[k] == text[k + p] else 0
            covered = run + p
            if covered >= COLLAPSE_MIN_REPEATS * p and covered > best[0]:
                best = (covered, p)
    return best


def is_collapsed(text: str) -> bool:
    """Whether one n-gram repeated back to back covers at least COLLAPSE_SHARE of the text."""
    return bool(text) and longest_repeat(text)[0] >= COLLAPSE_SHARE * len(text)


def has_python_keyword(text: str) -> bool:
    """Whether any word of the text is a Python keyword (`def`, `return`, `import`, ...)."""
    return any(u in _KEYWORDS for u in units(text))


def parses_as_python(text: str) -> bool:
    """Whether the text parses with `ast`, as it is or without its last line.

    A sample stops at a token limit, usually inside a line: dropping that unfinished line
    once is allowed. A text holding no code at all (only blanks) does not count as parsing.
    """
    if not text.strip():
        return False
    head = text.rpartition("\n")[0]  # the text without its last line
    candidates = [text] + ([head] if head.strip() else [])
    for candidate in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences and the like
                ast.parse(candidate)
            return True
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
    return False


@dataclass(frozen=True)
class SampleQuality:
    """The quality figures of one sample."""

    repetition_ratio: float
    distinct_1: float | None
    distinct_2: float | None
    collapsed: bool
    unique_chars: int
    has_keyword: bool | None = None
    """None when the run is not a code run."""
    parses: bool | None = None
    """None when the run is not a code run."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_quality(text: str, code: bool = False, prompt: str = "") -> SampleQuality:
    """Every figure of the continuation `text`; the code figures only when `code`.

    Only the generated text is measured, except that parsing reads prompt + text (a
    continuation of "def " is code only together with its prompt).
    """
    return SampleQuality(
        repetition_ratio=repetition_ratio(text),
        distinct_1=distinct_n(text, 1),
        distinct_2=distinct_n(text, 2),
        collapsed=is_collapsed(text),
        unique_chars=len(set(text)),
        has_keyword=has_python_keyword(text) if code else None,
        parses=parses_as_python(prompt + text) if code else None,
    )


def _mean(values: list[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def summarize(qualities: list[SampleQuality]) -> dict[str, Any]:
    """The figures of a batch of samples: means of the per-sample figures, and rates.

    collapse_rate, keyword_rate and parse_rate are shares of samples; the code rates are
    None when the samples are not code.
    """
    code = bool(qualities) and qualities[0].has_keyword is not None
    return {
        "samples": len(qualities),
        "repetition_ratio": _mean([q.repetition_ratio for q in qualities]),
        "distinct_1": _mean([q.distinct_1 for q in qualities]),
        "distinct_2": _mean([q.distinct_2 for q in qualities]),
        "collapse_rate": _mean([q.collapsed for q in qualities]),
        "unique_chars": _mean([q.unique_chars for q in qualities]),
        "keyword_rate": _mean([q.has_keyword for q in qualities]) if code else None,
        "parse_rate": _mean([q.parses for q in qualities]) if code else None,
    }


def is_code(data: DataConfig) -> bool:
    """Whether a run trains on Python source: the python-stdlib source, or only *.py files."""
    return data.source.strip() == "python-stdlib" or (
        bool(data.include) and all(p.endswith(".py") for p in data.include))
