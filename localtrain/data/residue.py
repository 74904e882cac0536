"""How much wiki markup cleaned text still holds: the measure the cleaning is checked by.

`residue(texts, site)` counts the characters of markup left in texts that `wiki.clean`
produced, as a share of all their characters, with the first leaks found.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from localtrain.data import wikilang
from localtrain.data.wiki import DEFAULT_SITE, Site, name_pattern

@dataclass(frozen=True)
class Residue:
    """How much of a cleaned text is markup: the share of its characters, and the first leaks seen."""

    fraction: float
    chars: int
    total: int
    examples: list[str]


@functools.lru_cache(maxsize=16)
def _residue_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    words, keys = name_pattern(wikilang.IMAGE_WORDS), name_pattern(wikilang.IMAGE_KEYS)
    pixels = name_pattern(wikilang.PIXELS)
    return re.compile("|".join((
        r"\[\[|\]\]|\{\{|\}\}|\{\||\|\}|\|\||\[(?:https?:|ftp:|mailto:)?//",  # links, templates, tables
        r"'{2,}",  # bold and italic quotes
        r"<!--|-->|</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>\n]*)?/?>",  # comments and HTML tags
        r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});",  # HTML entities
        r"(?-i:__[^\W_a-z]+(?:_[^\W_a-z]+)*__)",  # behaviour switches
        r"^[ \t]*[|!].*$",  # a table row or cell
        rf"(?:^|\|)[ \t]*(?:{words})[ \t]*\|",  # image parameters: thumb|, |right|
        rf"\b\d+(?:x\d+)?[ \t]*(?:{pixels})[ \t]*\|",  # 220px|
        rf"(?<![^\s|])(?:{keys})[ \t]*=",  # upright=, alt=, 代替文=
        # File:, Kategori:, Thể loại: before a name, at a line start or inside a line (Category:社会言語学),
        # not "subcategory:x"; Chinese and Japanese prose writes its colon "："
        rf"(?<![A-Za-z\u00C0-\u024F\u0400-\u04FF])(?:{name_pattern(names)})[ \t]*:(?=[^\s:])",
    )), re.M | re.I)


def residue(texts: Iterable[str], site: Site = DEFAULT_SITE) -> Residue:
    """The markup left in cleaned texts, as a share of their characters.

    Counted: link, template and table brackets and cells (`[[ ]] {{ }} {| |} ||`, a line
    starting with `|` or `!`), external-link openings, bold/italic quotes, comments, HTML
    tags and entities, behaviour switches, image parameters (`thumb|`, `220px|`, `upright=`,
    `alt=` and their spellings in `wikilang`) and the names of the file, media and category
    namespaces in `site`'s languages followed by a colon and a name. `examples` are the
    first matches.
    """
    pattern = _residue_pattern(tuple(sorted(site.names_of(wikilang.DROPPED_NAMESPACES))))
    chars = total = 0
    examples: list[str] = []
    for text in texts:
        total += len(text)
        for m in pattern.finditer(text):
            chars += len(m.group())
            if len(examples) < 20:
                examples.append(m.group())
    return Residue(chars / total if total else 0.0, chars, total, examples)
