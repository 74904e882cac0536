"""Sample-quality metrics on hand-made samples whose values are known."""

from __future__ import annotations

import pytest

from localtrain import quality
from localtrain.config import DataConfig


def test_fully_repeated_string() -> None:
    text = "la " * 40  # 120 characters, 40 words, all the same
    q = quality.sample_quality(text)
    # Character 4-grams: 117 of them, only "la l", "a la" and " la " distinct.
    assert q.repetition_ratio == pytest.approx(1 - 3 / 117)
    assert q.distinct_1 == pytest.approx(1 / 40)
    assert q.distinct_2 == pytest.approx(1 / 39)
    assert q.collapsed is True
    assert q.unique_chars == 3
    assert quality.longest_repeat(text) == (120, 3)
    assert q.has_keyword is None and q.parses is None  # not a code run


def test_single_character_run() -> None:
    q = quality.sample_quality("e" * 50)
    assert q.repetition_ratio == pytest.approx(1 - 1 / 47)
    assert q.distinct_1 == 1.0 and q.distinct_2 is None  # one word, no bigram
    assert q.collapsed is True and q.unique_chars == 1


def test_diverse_string() -> None:
    text = "The quick brown fox jumps over the lazy dog"
    q = quality.sample_quality(text)
    assert q.repetition_ratio == 0.0  # no character 4-gram occurs twice
    assert q.distinct_1 == 1.0 and q.distinct_2 == 1.0  # "The" and "the" are different words
    assert q.collapsed is False
    assert q.unique_chars == 28  # 26 letters, "T" and the space


def test_collapse_needs_half_the_sample() -> None:
    head = "abcdefghijklmnopqrst"  # 20 distinct characters
    assert not quality.is_collapsed(head + "xy" * 5)  # the repeat covers 10 of 30 characters
    assert quality.is_collapsed(head + "xy" * 10)  # 20 of 40: exactly half
    assert not quality.is_collapsed("")
    assert not quality.is_collapsed("abab")  # two copies are not a collapse
    assert quality.is_collapsed("ababab")


def test_python_keywords_and_parsing() -> None:
    valid = "def f(x):\n    return x + 1\n"
    q = quality.sample_quality(valid, code=True)
    assert q.has_keyword is True and q.parses is True
    invalid = "def f(x:\n    retur x +\n)) = 3\n"
    assert quality.parses_as_python(invalid) is False
    # A sample cut inside its last line still parses without that line.
    assert quality.parses_as_python("x = 1\ny = fo(") is True
    assert quality.parses_as_python("   \n  ") is False
    # Keywords are whole words: "format" and "classic" hold none.
    assert quality.has_python_keyword("format the classic text") is False
    assert quality.has_python_keyword("x if y else z") is True
    # The prompt is parsed with the continuation but never counted as the model's keyword.
    q = quality.sample_quality(" f():\n    pass\n", code=True, prompt="def")
    assert q.parses is True and q.has_keyword is True  # "pass" is the model's own
    q = quality.sample_quality(" f(:", code=True, prompt="def")
    assert q.parses is False and q.has_keyword is False


def test_summary_rates() -> None:
    qs = [quality.sample_quality(t, code=True) for t in ("import os\n", ")" * 30, "x = (", "return 1")]
    s = quality.summarize(qs)
    assert s["samples"] == 4
    assert s["collapse_rate"] == pytest.approx(1 / 4)
    assert s["keyword_rate"] == pytest.approx(2 / 4)  # import, return
    # "import os" parses; so does "return 1" (ast accepts it at module level, only compiling refuses).
    assert s["parse_rate"] == pytest.approx(2 / 4)
    assert s["unique_chars"] == pytest.approx((len(set("import os\n")) + 1 + 4 + len(set("return 1"))) / 4)
    prose = quality.summarize([quality.sample_quality("hello there")])
    assert prose["keyword_rate"] is None and prose["parse_rate"] is None
    assert quality.summarize([])["repetition_ratio"] is None


def test_code_runs_are_recognised() -> None:
    assert quality.is_code(DataConfig())  # the default source, python-stdlib
    assert quality.is_code(DataConfig(source="src", include=["*.py", "pkg/*.py"]))
    assert not quality.is_code(DataConfig(source="input.txt"))
    assert not quality.is_code(DataConfig(source="src", include=["*.py", "*.md"]))
