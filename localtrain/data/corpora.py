"""The named corpora: what each is, where it comes from and how big it is.

A name here is a valid `data.source` (fetched when first prepared); the sizes let the
planner say how much disk a run needs before anything is downloaded. A corpus known by
its origin only (`named=False`) gives its sizes but is not a name of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

WIKIMEDIA = "https://dumps.wikimedia.org"


@dataclass(frozen=True)
class NamedCorpus:
    """One corpus: its name, what it is, where it comes from (a URL or hf:NAME), and its sizes."""

    name: str
    about: str
    origin: str
    text_bytes: int
    download_bytes: int
    named: bool = True


CORPORA = (
    NamedCorpus("tinyshakespeare", "the `input.txt` file of Karpathy's char-rnn tinyshakespeare",
                "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                1_115_394, 1_115_394),
    NamedCorpus("wikitext-103", "the WikiText-103 raw text files (wiki.train.raw and friends)",
                "hf:Salesforce/wikitext/wikitext-103-raw-v1", 540_000_000, 190_000_000),
    NamedCorpus("enwiki", "a Wikipedia dump or a folder of extracted article text",
                f"{WIKIMEDIA}/enwiki/latest/enwiki-latest-pages-articles-multistream.xml.bz2",
                21_000_000_000, 25_000_000_000),
    NamedCorpus("hf:Skylion007/openwebtext", "the OpenWebText corpus", "hf:Skylion007/openwebtext",
                40_000_000_000, 13_000_000_000, named=False),
)

NAMED: dict[str, NamedCorpus] = {c.name: c for c in CORPORA if c.named}
"""The corpora a `data.source` may name (lower case)."""


def origin(name: str) -> str | None:
    """Where the named corpus `name` (any case) comes from; None for a name that is not one."""
    found = NAMED.get(name.strip().lower())
    return found.origin if found else None


def known_bytes(source: str) -> tuple[int, int] | None:
    """(text bytes, download bytes) of a corpus known by this exact name, or None."""
    found = next((c for c in CORPORA if c.name == source), None)
    return (found.text_bytes, found.download_bytes) if found else None
