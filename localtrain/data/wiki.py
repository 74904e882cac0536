"""MediaWiki pages: wiki markup to plain text, and the page filters.

`clean(markup)` turns one page's wikitext into the prose a reader sees: templates,
references, tables, files and images, categories and interlanguage links, comments,
HTML tags and bold/italic quotes go; links keep their label; section titles stay as
lines of their own; HTML entities become characters. It is a single pass of regular
expressions plus two linear scanners for the nested constructs (templates and tables),
so it runs in time linear in the page.

`page_drop_reason(page)` says why a page is not an article (another namespace, a
redirect, a disambiguation page), or None for an article.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass


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
_INTERLANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*:")
_HEADING = re.compile(r"(={1,6})\s*(.*?)\s*\1$")
_SWITCH = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS = re.compile(r"\(\s*[,;:.]?\s*\)")
_SPLIT_ARGS = re.compile(r"\|(?![^\[]*\]\])")
_DISAMBIGUATION = re.compile(
    r"\{\{\s*(?:[^{}|]*disambig[^{}|]*|dab|disamb|hndis|geodis|numberdis|schooldis|hospitaldis|mathdab|"
    r"roaddis|shipindex|letter-number combination disambiguation)\s*(?:\|[^{}]*)?\}\}",
    re.I,
)
HEADING_MARK = "\x00"

# Namespaces whose links are not text: the file, image or category they name is dropped.
_DROPPED_LINK_NAMESPACES = {"file", "image", "media", "category"}
# Templates that stand for text in the sentence: their first argument (or a fixed string) is kept.
_KEEP_FIRST_ARG = {"nowrap", "nobr", "small", "big", "smaller", "larger", "sc", "smallcaps", "nowrap begin",
                   "lang", "transl", "transliteration", "script", "math", "mvar", "var", "em", "strong",
                   "visible anchor", "abbr", "keypress", "code", "not a typo", "sic", "linktext", "lit",
                   "gloss", "ill", "interlanguage link", "section link", "tooltip", "nihongo"}
_FIXED = {"'": "'", "' \"": "'\"", "\" '": "\"'", "ndash": "–", "mdash": "—", "snd": " – ", "spaced ndash": " – ",
          "dash": " – ", "middot": "·", "·": " · ", "nbsp": " ", "thinsp": " ", "-": "", "clear": "",
          "and": " and ", "=": "="}


def is_disambiguation(title: str, markup: str) -> bool:
    """Whether a page is a disambiguation page: by its title or its disambiguation template."""
    return title.endswith("(disambiguation)") or _DISAMBIGUATION.search(markup) is not None


def page_drop_reason(page: Page) -> str | None:
    """Why a page is not an article ("namespace", "redirect", "disambiguation"); None if it is one."""
    if page.ns != 0:
        return "namespace"
    if page.redirect or page.text.lstrip()[:9].upper() == "#REDIRECT":
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
    if head == "convert" or head == "cvt":
        args = _split_args(strip_templates(inner))
        if len(args) >= 3:
            return f"{args[1]} {args[2]}"
        return ""
    keep = head in _KEEP_FIRST_ARG or head.startswith("lang-")
    if not keep:
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


def _external(m: re.Match[str]) -> str:
    return m.group(1) or ""


def _link(m: re.Match[str]) -> str:
    inner, trail = m.group(1), m.group(2)
    target, sep, label = inner.partition("|")
    target = target.strip()
    colon = target.startswith(":")
    target = target.lstrip(":").strip()
    prefix, has_prefix, rest = target.partition(":")
    namespace = prefix.strip().lower() if has_prefix else ""
    if namespace in _DROPPED_LINK_NAMESPACES and not (colon and namespace == "category"):
        return ""
    if not colon and has_prefix and _INTERLANGUAGE.fullmatch(prefix + ":"):
        return ""  # an interlanguage link: [[fr:Article]]
    if sep:
        label = label.strip()
        if not label:
            # The pipe trick: [[Paris, Texas|]] shows "Paris", [[Help:Contents|]] shows "Contents".
            label = re.sub(r"\s*\(.*\)$", "", rest if has_prefix else target).split(",")[0]
        return label + trail
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


def clean(markup: str) -> str:
    """Plain text of one page's wiki markup; section titles are kept as lines of their own."""
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
        text = _EXTERNAL.sub(_external, text)
        for _ in range(8):  # innermost links first: a file caption may hold links of its own
            text, n = _LINK.subn(_link, text)
            if not n:
                break
        text = text.replace("[[", "").replace("]]", "")
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
