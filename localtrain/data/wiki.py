"""MediaWiki pages: wiki markup to plain text, and the page filters.

`clean(markup, site)` turns one page's wikitext into the prose a reader sees: templates,
references, tables, files and images, categories and interlanguage links, comments,
HTML tags and bold/italic quotes go; links keep their label; section titles stay as
lines of their own; HTML entities become characters. It is a single pass of regular
expressions plus two linear scanners for the nested constructs (templates and tables),
so it runs in time linear in the page. The `Site` says which link prefixes name the file,
media and category namespaces: the dump's own names (`<siteinfo>`) with the canonical
English ones and the aliases of `wikilang`.

`page_drop_reason(page)` says why a page is not an article (another namespace, a
redirect, a disambiguation page), or None for an article (`residue.py` measures the markup
clean() leaves).
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from localtrain.data import wikilang


@dataclass(frozen=True)
class Page:
    """One `<page>` of a MediaWiki XML export."""

    title: str
    ns: int
    id: int
    redirect: bool
    text: str


# Tags whose content is never prose: dropped with everything inside them.
_DROPPED_TAGS = (
    "ref|references|math|chem|ce|gallery|timeline|imagemap|score|graph|mapframe|maplink|templatedata|"
    "syntaxhighlight|source|hiero|inputbox|categorytree|noinclude|includeonly|indicator|section"
)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_SELF_CLOSING = re.compile(rf"<(?:{_DROPPED_TAGS})\b[^<>]*/\s*>", re.I)
_PAIRED = re.compile(rf"<({_DROPPED_TAGS})\b[^<>]*>.*?(?:</\1\s*>|\Z)", re.I | re.S)
_NOWIKI = re.compile(r"<nowiki\s*/?>|</nowiki\s*>", re.I)
_BREAK = re.compile(r"<br\s*/?\s*>", re.I)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_TEMPLATE_TOKENS = re.compile(r"\{\{|\}\}")
_TABLE_TOKENS = re.compile(r"\{\||\|\}")
_EXTERNAL = re.compile(r"\[(?:https?:|ftp:|mailto:|//)[^\s\[\]]*(?:\s+([^\[\]]*))?\]", re.I)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]([a-z]*)")
# A link holds no other link, but may hold single brackets: a caption's "[above]", "Bicyclo[1.1.0]butane".
_BRACKETED_LINK = re.compile(r"\[\[([^\[\]]*(?:(?:\[(?!\[)|\](?!\]))[^\[\]]*)*)\]\]([a-z]*)")
_INTERLANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*|simple")  # language codes of other wikis
_HEADING = re.compile(r"(={1,6})\s*(.*?)\s*\1$")
# Behaviour switches (__TOC__, __目次__, __БЕЗ_ОГЛ__), never a lower-case Latin name like __init__.
_SWITCH = re.compile(r"__[^\W_a-z]+(?:_[^\W_a-z]+)*__")
_EMPTY_PARENS = re.compile(r"\(\s*[,;:.]?\s*\)")
_SPLIT_ARGS = re.compile(r"\|(?![^\[]*\]\])")


def name_pattern(names: Iterable[str]) -> str:
    """An alternation of names, longest first, where a space also matches `_`."""
    return "|".join("[ _]+".join(map(re.escape, n.split())) for n in sorted(set(names), key=len, reverse=True))


_DISAMBIGUATION = re.compile(
    rf"\{{\{{\s*(?:{name_pattern(wikilang.DISAMBIGUATION_TEMPLATES)}|(?![^{{}}|]*needed)[^{{}}|]*"
    rf"{wikilang.DISAMBIGUATION_WORD}[^{{}}|]*)\s*(?:\|[^{{}}]*)?\}}\}}",
    re.I,
)
HEADING_MARK = "\x00"

# Templates that stand for text in the sentence: their first argument (or a fixed string) is kept.
_KEEP_FIRST_ARG = {"nowrap", "nobr", "small", "big", "smaller", "larger", "sc", "smallcaps", "nowrap begin",
                   "lang", "transl", "transliteration", "script", "math", "mvar", "var", "em", "strong",
                   "visible anchor", "abbr", "keypress", "code", "not a typo", "sic", "linktext", "lit",
                   "gloss", "ill", "interlanguage link", "section link", "tooltip", "nihongo"}
_FIXED = {"'": "'", "' \"": "'\"", "\" '": "\"'", "ndash": "–", "mdash": "—", "snd": " – ", "spaced ndash": " – ",
          "dash": " – ", "middot": "·", "·": " · ", "nbsp": " ", "thinsp": " ", "-": "", "clear": "",
          "and": " and ", "=": "="}


def _fold(name: str) -> str:
    # MediaWiki compares namespace names without case, `_` as a space; casefold spells a
    # Turkish dotted capital I with a combining dot, which the lower-case spelling lacks.
    return " ".join(name.replace("_", " ").split()).casefold().replace("\u0307", "")


# Link prefixes repeat (File, Category, the language codes of interlanguage links): fold each once.
_fold_prefix = functools.lru_cache(maxsize=4096)(_fold)


@dataclass(frozen=True)
class Site:
    """The namespaces of one wiki: every name a link may use for each, folded (see `_fold`)."""

    names: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_namespaces(cls, local: dict[int, list[str]] | None = None) -> Site:
        """The dump's own namespace names (`local`, from `<siteinfo>`) over the table's canonical names and aliases."""
        names = {_fold(name): key for key, aliases in wikilang.namespace_aliases().items() for name in aliases}
        names.update({_fold(name): key for key, own in (local or {}).items() for name in own if name.strip()})
        return cls(names)

    def namespace(self, prefix: str) -> int | None:
        """The namespace key a link prefix names, or None when it names none."""
        return self.names.get(_fold_prefix(prefix))

    def names_of(self, keys: Iterable[int]) -> list[str]:
        """Every (folded) name of the given namespaces."""
        wanted = set(keys)
        return [name for name, key in self.names.items() if key in wanted]


DEFAULT_SITE = Site.from_namespaces()
_REDIRECTS = tuple(_fold(w) for w in wikilang.REDIRECTS)


def is_disambiguation(title: str, markup: str) -> bool:
    """Whether a page is a disambiguation page: by its title, the magic word or a disambiguation template."""
    return (title.endswith(wikilang.DISAMBIGUATION_TITLES) or wikilang.DISAMBIGUATION_MAGIC in markup
            or _DISAMBIGUATION.search(markup) is not None)


def is_redirect(page: Page) -> bool:
    """Whether a page is a redirect: marked so by the dump, or starting with a redirect word of any language."""
    return page.redirect or _fold(page.text.lstrip()[:24]).startswith(_REDIRECTS)


def page_drop_reason(page: Page) -> str | None:
    """Why a page is not an article ("namespace", "redirect", "disambiguation"); None if it is one."""
    if page.ns != 0:
        return "namespace"
    if is_redirect(page):
        return "redirect"
    if is_disambiguation(page.title, page.text):
        return "disambiguation"
    return None


def _split_args(inner: str) -> list[str]:
    return [a.strip() for a in _SPLIT_ARGS.split(inner)]


def _template_text(raw: str) -> str:
    """The text one template (with its braces) leaves in a sentence: usually nothing."""
    inner = raw[2:-2]
    head = inner.split("|", 1)[0].strip().lower().replace("_", " ")
    if head in _FIXED:
        return _FIXED[head]
    if head in ("convert", "cvt"):
        args = _split_args(strip_templates(inner))
        return f"{args[1]} {args[2]}" if len(args) >= 3 else ""
    if not (head in _KEEP_FIRST_ARG or head.startswith("lang-")):
        return ""
    args = [a for a in _split_args(strip_templates(inner))[1:] if "=" not in a.split("[[", 1)[0]]
    if not args:
        return ""
    # {{lang|fr|texte}} and {{transl|ja|romaji}}: the text is the last positional argument.
    return args[-1] if head in ("lang", "transl", "transliteration", "script") else args[0]


def strip_templates(text: str) -> str:
    """Remove `{{...}}` templates, nested ones included; a few text templates leave their text."""
    if "{{" not in text:
        return text
    out: list[str] = []
    depth = last = start = 0
    for m in _TEMPLATE_TOKENS.finditer(text):
        if m.group() == "{{":
            if depth == 0:
                out.append(text[last:m.start()])
                start = m.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                out.append(_template_text(text[start:m.end()]))
                last = m.end()
    if depth:
        # An unclosed template: the rest of its paragraph goes with it.
        end = text.find("\n\n", start)
        last = len(text) if end < 0 else end
    out.append(text[last:])
    return "".join(out)


def strip_tables(text: str) -> str:
    """Remove `{| ... |}` tables, nested ones included (an unclosed one runs to the end)."""
    if "{|" not in text:
        return text.replace("|}", "")
    out: list[str] = []
    depth = last = 0
    for m in _TABLE_TOKENS.finditer(text):
        if m.group() == "{|":
            if depth == 0:
                out.append(text[last:m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                last = m.end()
        else:
            out.append(text[last:m.start()])
            last = m.end()
    if not depth:
        out.append(text[last:])
    return "".join(out)


def _link(site: Site, m: re.Match[str]) -> str:
    inner, trail = m.group(1), m.group(2)
    target, sep, label = inner.partition("|")
    target, label = target.strip(), label.strip()  # (label is empty without a pipe)
    colon = target.startswith(":")
    target = target.lstrip(":").strip()
    prefix, has_prefix, rest = target.partition(":")
    if has_prefix:
        namespace = site.namespace(prefix)
        if namespace is None:
            code = prefix.strip()
            interwiki = code.lower() in wikilang.INTERWIKI
            language = _INTERLANGUAGE.fullmatch(code) is not None  # lower case: [[Re:Zero]] is an article
            if language and not colon and not interwiki:
                return ""  # an interlanguage link, [[fr:Article]]: shown beside the page, not in it
            if interwiki or language:
                # [[wikt:word]], [[:fr:Paris|Paris]]: the text without the prefix of the other wiki
                return (label or rest.strip().lstrip(":")) + trail
        elif namespace in wikilang.DROPPED_NAMESPACES:
            if not colon:
                return ""  # a file, a sound or a category of the page: not text
            # [[:Category:X|the category]] is a plain link to that page: its label, or its name
            return (label or rest.strip()) + trail
    if sep:
        # The pipe trick: [[Paris, Texas|]] shows "Paris", [[Help:Contents|]] shows "Contents".
        return (label or re.sub(r"\s*\(.*\)$", "", rest if has_prefix else target).split(",")[0]) + trail
    if target.startswith("#"):
        return target[1:] + trail
    return target + trail


def _lines(text: str) -> str:
    """One pass over the lines: section titles, lists, table rows, rules, blank runs, empty sections."""
    out: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            if out and out[-1]:
                out.append("")
            continue
        c = line[0]
        if c == "=":
            m = _HEADING.match(line)
            if m:
                line = HEADING_MARK + m.group(2)
        elif c in "*#:;":
            line = line.lstrip("*#:; \t")
            if not line:
                continue
        elif c in "|!" or (c == "-" and line.startswith("----")):
            continue  # a table row left without its table, or a horizontal rule
        out.append(line)
    # A section title with nothing under it (References, External links, ...) goes.
    keep: list[str] = []
    following_heading = True  # the end of the page counts as a heading
    for line in reversed(out):
        if line.startswith(HEADING_MARK):
            if following_heading:
                continue
            following_heading = True
            keep.append(line[1:])
        elif line:
            following_heading = False
            keep.append(line)
        elif keep and keep[-1]:
            keep.append(line)
    keep.reverse()
    return "\n".join(keep)


def clean(markup: str, site: Site = DEFAULT_SITE) -> str:
    """Plain text of one page's wiki markup; section titles are kept as lines of their own.

    `site` names the wiki's namespaces (`dump.read_site` reads them from a dump).
    """
    text = markup
    if "<!--" in text:
        text = _COMMENT.sub("", text)
    if "<" in text:
        text = _SELF_CLOSING.sub("", text)
        text = _PAIRED.sub("", text)
        if "nowiki" in text:
            text = _NOWIKI.sub("", text)
    text = strip_templates(text)
    text = strip_tables(text)
    if "[" in text:
        link = functools.partial(_link, site)
        # Innermost links first: a file caption may hold links of its own. The plain pattern
        # is the fast one; links that hold single brackets are left for the second.
        for pattern in (_LINK, _BRACKETED_LINK):
            for _ in range(8):
                text, n = pattern.subn(link, text)
                if not n or "[[" not in text:
                    break
            if "[[" not in text:
                break
        text = text.replace("[[", "").replace("]]", "")
        # After the links: an external link's label may hold one, [http://... talk at [[UC Berkeley]]].
        text = _EXTERNAL.sub(lambda m: m.group(1) or "", text)
    if "<" in text:
        text = _BREAK.sub(" ", text)
        text = _TAG.sub("", text)
    text = text.replace("\'\'\'\'\'", "").replace("\'\'\'", "").replace("\'\'", "")
    if "__" in text:
        text = _SWITCH.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    if "(" in text:
        text = _EMPTY_PARENS.sub("", text)
    text = text.replace("\u00a0", " ").replace("\t", " ")
    while "  " in text:
        text = text.replace("  ", " ")
    text = text.replace(" ,", ",").replace(" . ", ". ").replace(" .\n", ".\n")
    return _lines(text).strip()
