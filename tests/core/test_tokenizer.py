"""The sentencepiece tokenizer: exact round trips, char vocabularies, vocab sizing, byte counts."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, need
from localtrain.config import DataConfig
from localtrain.data.tokenizer import Tokenizer, train_tokenizer
from localtrain.errors import DataError
from localtrain.events import Prepare, Warning

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
SPECIALS = {"<unk>", "<s>", "</s>"}

TRICKY = [
    "def f(x):\n\tif x:\n\t\treturn  x  \n\n\n    # trailing   \n",
    "  leading spaces and a tab\t\n",
    "\n\nstarts with newlines",
    "unicode: café, naïve, 中文, emoji 😀, math ∑ → ∞\n",
    "class A:\n    def __init__(self):\n        self.x = {'a': [1, 2, 3]}\n\r\n",
    "no newline at the end",
    " ",
    "",
]


def config(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), **kw)


def code_sample() -> list[str]:
    names = ["textwrap.py", "argparse.py", "dataclasses.py", "functools.py", "string.py", "heapq.py"]
    return [(STDLIB / n).read_text(encoding="utf-8") for n in names if (STDLIB / n).is_file()]


def shakespeare() -> str:
    return need(SHAKESPEARE).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(code_sample(), config(tokenizer="bpe", vocab_size=1024), lambda e: None)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_round_trip_on_code(kind: str) -> None:
    sample = code_sample()
    events: list = []
    tok = train_tokenizer(sample, config(tokenizer=kind, vocab_size=800), events.append)
    assert tok.vocab_size == 800
    for text in TRICKY + sample[:2]:
        assert tok.decode(tok.encode(text)) == text
    done = [e for e in events if isinstance(e, Prepare)]
    assert done[-1].stage == "tokenizer" and "800" in done[-1].message and done[-1].seconds > 0


def test_subword_round_trip_on_prose() -> None:
    text = shakespeare()
    tok = train_tokenizer([text[:300_000]], config(tokenizer="bpe", vocab_size=1000), lambda e: None)
    assert tok.decode(tok.encode(text[-50_000:])) == text[-50_000:]


def test_tokenizer_basics(bpe: Tokenizer, tmp_path: Path) -> None:
    assert (bpe.unk_id, bpe.bos_id, bpe.eos_id) == (0, 1, 2)
    ids = bpe.encode("import os\n")
    assert bpe.bos_id not in ids and bpe.eos_id not in ids
    assert bpe.encode("\n") == [bpe.pieces().index("\n")]
    path = tmp_path / "tokenizer.model"
    path.write_bytes(bpe.model_bytes)
    again = Tokenizer.load(path)
    assert again.sha256 == bpe.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert again.encode(TRICKY[0]) == bpe.encode(TRICKY[0])


def test_token_bytes_sum_to_utf8_length(bpe: Tokenizer) -> None:
    table = bpe.token_bytes()
    assert table.dtype == np.int32 and len(table) == bpe.vocab_size
    assert table[bpe.unk_id] == table[bpe.bos_id] == table[bpe.eos_id] == 0
    assert table[bpe.pieces().index("<0xE4>")] == 1
    for text in TRICKY + code_sample()[:1]:
        assert int(table[bpe.encode(text)].sum()) == len(text.encode("utf-8"))


def expected_alphabet(text: str, coverage: float) -> set[str]:
    counts = collections.Counter(text.replace(" ", "\u2581"))
    total = sum(counts.values())
    chosen, covered = set(), 0
    for char, count in sorted(counts.items(), key=lambda kv: (-kv[1], ord(kv[0]))):
        if covered / total >= coverage:
            break
        chosen.add(char)
        covered += count
    return chosen | {"\n"}


def test_char_vocab_is_exactly_the_needed_characters() -> None:
    text = shakespeare()
    tok = train_tokenizer([text], config(tokenizer="char", character_coverage=1.0, vocab_size=4096),
                          lambda e: None)
    assert len(set(text)) == 65
    assert set(tok.pieces()) == {c.replace(" ", "\u2581") for c in set(text)} | SPECIALS
    assert tok.vocab_size == 68
    excerpt = text[:5000]
    assert tok.decode(tok.encode(excerpt)) == excerpt
    assert int(tok.token_bytes()[tok.encode(excerpt)].sum()) == len(excerpt.encode())


def test_char_vocab_follows_coverage() -> None:
    text = shakespeare()
    tok = train_tokenizer([text], config(tokenizer="char", character_coverage=0.999), lambda e: None)
    want = expected_alphabet(text, 0.999)
    assert len(want) < 65
    assert set(tok.pieces()) == want | SPECIALS


def test_char_round_trip_on_code() -> None:
    sample = code_sample() + TRICKY[:2]  # the stdlib has no tabs; these bring some
    tok = train_tokenizer(sample, config(tokenizer="char", character_coverage=1.0), lambda e: None)
    assert "\t" in tok.pieces()
    for text in sample[:2] + TRICKY[:3]:
        assert tok.decode(tok.encode(text)) == text


def test_a_vocab_too_large_shrinks_with_a_warning_or_raises_under_exact_fit() -> None:
    sample = [code_sample()[0][:20_000]]
    events: list = []
    tok = train_tokenizer(sample, config(tokenizer="bpe", vocab_size=50_000), events.append)
    warnings = [e for e in events if isinstance(e, Warning)]
    assert warnings and warnings[0].code == "vocab_shrunk" and "50000" in warnings[0].message
    assert tok.vocab_size < 50_000 and str(tok.vocab_size) in warnings[-1].message
    assert tok.decode(tok.encode(sample[0])) == sample[0]

    with pytest.raises(DataError) as err:
        train_tokenizer(sample, config(tokenizer="bpe", vocab_size=50_000, vocab_fit="exact"), lambda e: None)
    message = str(err.value)
    largest = int(re.search(r"at most (\d+)", message).group(1))
    assert "50000" in message and f"--set data.vocab_size={largest}" in message
    assert largest == int(re.search(r"to (\d+) pieces", warnings[0].message).group(1))


def test_vocab_smaller_than_the_characters_raises() -> None:
    with pytest.raises(DataError) as err:
        train_tokenizer(code_sample()[:1], config(tokenizer="bpe", vocab_size=100), lambda e: None)
    numbers = re.findall(r"\d+", str(err.value))
    assert "100" in numbers and any(int(n) > 256 for n in numbers)
    assert "data.vocab_size" in str(err.value)


def test_the_trainers_marker_character_does_not_drop_text() -> None:
    # sentencepiece silently drops every training sentence holding U+2585.
    sample = ["\u2585 " + code_sample()[0]]
    tok = train_tokenizer(sample, config(tokenizer="bpe", vocab_size=600), lambda e: None)
    assert tok.decode(tok.encode(sample[0])) == sample[0]
