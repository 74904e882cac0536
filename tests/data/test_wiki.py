"""Wiki markup cleaning and MediaWiki dump reading, on the real dumps in ../shared/data/wikipedia."""

from __future__ import annotations

import bz2
import re
from pathlib import Path

from conftest import SHARED_DATA, need
from localtrain.data import dump, wiki
from localtrain.data.dumpsource import DumpSource, MultistreamSource, clean_pages
from localtrain.data.local import open_local
from localtrain.data.stream import run_tasks
from localtrain.data.residue import residue
from localtrain.data.wiki import clean, page_drop_reason

WIKI = SHARED_DATA / "wikipedia"
ENWIKI = WIKI / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
TABLES = WIKI / "enwiki-table-markup.xml.bz2"
MULTI = WIKI / "multistream" / "enwiktionary-20150224-pages-articles-multistream.xml.bz2"
# Markup that must never survive cleaning, counted as plain substrings (independently of residue.residue).
MARKERS = ("{{", "}}", "[[", "]]", "<ref", "{|", "|}", "'''", "<!--", "&amp;", "&nbsp;", "[http", "Category:",
           "File:", "Image:", "thumb|", "px|", "upright=", "__TOC__")


def raw_pages(path: Path) -> list[str]:
    """The `<page>` elements of a dump, cut out with a regular expression (not the parser under test)."""
    return re.findall(r"<page>.*?</page>", bz2.decompress(path.read_bytes()).decode("utf-8"), re.S)


def header_site(path: Path) -> wiki.Site:
    xml = bz2.decompress(path.read_bytes())
    return dump.read_site(xml[: xml.find(b"<page>")])


def markers(texts: list[str]) -> dict[str, int]:
    """How often each marker occurs in the texts (those that occur)."""
    counts = {m: sum(t.count(m) for t in texts) for m in MARKERS}
    return {m: n for m, n in counts.items() if n}


def articles(path: Path, workers: int = 1) -> tuple[list, dict]:
    source = open_local(path, [], [], 1 << 16)
    docs, dropped = [], {}
    for result, _ in run_tasks(source.tasks(None), workers):
        docs.extend(result.docs)
        for k, v in result.dropped.items():
            dropped[k] = dropped.get(k, 0) + v
    return docs, dropped


def test_cleaner_on_every_construct() -> None:
    markup = (
        "{{Infobox person|name=X|birth={{birth date|1900|1|1}}}}\n"
        "'''Ada''' (<!-- hidden -->born 1815) was an ''English'' [[mathematician]] and [[writer|author]]"
        "<ref name=\"a\">A source {{cite book|title=T}}</ref>, chiefly known for her [[Analytical Engine|work]]"
        "<ref name=\"b\"/>. She worked with [[Charles Babbage]]s machines &amp; wrote 5&nbsp;notes.\n"
        "[[File:Ada.jpg|thumb|Portrait by [[Alfred Chalon]] in 1840]]\n"
        "== Early life ==\n"
        "Her father was [[Lord Byron|Byron]]. She studied {{lang|fr|la mathématique}} in <small>London</small>.\n"
        "{| class=\"wikitable\"\n|-\n! Year !! Event\n|-\n| 1843 || Notes {{efn|n}}\n|}\n"
        "* A list item about [http://example.org her notes]\n"
        "== References ==\n{{reflist}}\n"
        "[[Category:1815 births]]\n[[fr:Ada Lovelace]]\n"
    )
    text = clean(markup)
    assert text.splitlines()[0] == (
        "Ada (born 1815) was an English mathematician and author, chiefly known for her work. She worked with "
        "Charles Babbages machines & wrote 5 notes.")
    assert "Early life" in text.splitlines()  # a section title is a line of its own
    assert "Her father was Byron. She studied la mathématique in London." in text
    assert "A list item about her notes" in text
    for gone in ("Portrait", "Chalon", "Category", "1815 births", "fr:", "Year", "1843", "References", "cite",
                 "hidden", "source"):
        assert gone not in text, gone
    assert markers([text]) == {} and residue([text]).chars == 0


def test_enwiki_dump_keeps_every_article_and_its_prose() -> None:
    need(ENWIKI)
    raw = raw_pages(ENWIKI)
    ns0 = [p for p in raw if "<ns>0</ns>" in p]
    redirects = [p for p in ns0 if "<redirect" in p]
    disambiguation = [p for p in ns0 if "<redirect" not in p and re.search(r"\{\{\s*(disambig|geodis|hndis)",
                                                                            p, re.I)]
    docs, dropped = articles(ENWIKI)
    assert len(raw) == 206 and len(ns0) - len(redirects) == len(docs) + dropped["disambiguation"]
    assert dropped == {"redirect": len(redirects), "namespace": len(raw) - len(ns0),
                       "disambiguation": len(disambiguation)}
    titles = [d.title for d in docs]
    assert len(set(titles)) == len(titles) and titles[0] == "Anarchism"
    anarchism = docs[0].text
    assert anarchism.startswith("Anarchism is a political philosophy that advocates self-governed societies")
    assert "\nEtymology and terminology\n" in anarchism
    # A caption with brackets of its own ("[above]") and an external link whose label holds a link.
    animal_farm = next(d.text for d in docs if d.title == "Animal Farm")
    assert "Skrypnyk" not in animal_farm and "drowned in the continual" not in animal_farm
    huxley = next(d.text for d in docs if d.title == "Aldous Huxley")
    assert '"The Ultimate Revolution" (talk at UC Berkeley, 20 March 1962)' in huxley.splitlines()
    texts = [d.text for d in docs]
    assert markers(texts) == {} and residue(texts, header_site(ENWIKI)).chars == 0
    assert all(len(d.text) > 0 for d in docs)


def test_table_heavy_articles_lose_their_tables_not_their_prose() -> None:
    need(TABLES)
    docs, dropped = articles(TABLES)
    assert len(docs) == 5 and not dropped
    prison = next(d for d in docs if d.title == "List of Prison Break characters")
    assert prison.text.startswith("This is a list of characters in the American television series, Prison Break.")
    texts = [d.text for d in docs]
    assert markers(texts) == {} and residue(texts).chars == 0
    assert not any(line.startswith(("|", "!")) for d in docs for line in d.text.splitlines())


def test_multistream_stream_by_stream_equals_reading_it_whole() -> None:
    need(MULTI)
    source = open_local(MULTI, [], [], 1 << 16)
    assert isinstance(source, MultistreamSource) and len(source.streams) == 3
    report = dump.DumpReport()
    pages = list(dump.iter_pages(MULTI, report))
    assert source.site.names == report.site.names and source.site.namespace("Wiktionary") == 4
    whole = clean_pages(pages, 0, report.site)
    for workers in (1, 2):
        docs, dropped = articles(MULTI, workers)
        assert docs == whole.docs and dropped == whole.dropped
    assert len(whole.docs) + sum(whole.dropped.values()) == 300
    # Resuming at a stream offset gives the rest of the documents.
    tasks = list(source.tasks(None))
    second = tasks[0][2]
    rest = [d for result, _ in run_tasks(source.tasks(second), 1) for d in result.docs]
    assert rest == whole.docs[len(whole.docs) - len(rest):] and 0 < len(rest) < len(whole.docs)


def test_a_dump_cut_off_mid_page_keeps_every_complete_page(tmp_path: Path) -> None:
    need(ENWIKI)
    xml = bz2.decompress(ENWIKI.read_bytes())
    cut = xml.find(b"<page>", len(xml) // 2) + 300  # inside a page
    complete = xml[:cut].count(b"</page>")
    path = tmp_path / "cut.xml.bz2"
    path.write_bytes(bz2.compress(xml[:cut]))
    source = DumpSource(path)
    pages = [p for result, _ in run_tasks(source.tasks(None), 1) for p in result.docs]
    report = source.report
    assert report.pages == complete and len(pages) > 0
    assert "ends in the middle of a page" in report.problem and f"after {complete} complete pages" in report.problem
    assert source.problems() and str(path) in source.problems()[0]


def test_a_corrupt_bz2_block_keeps_the_pages_before_it(tmp_path: Path) -> None:
    need(ENWIKI)
    data = bytearray(ENWIKI.read_bytes())
    middle = len(data) * 3 // 4
    data[middle : middle + 64] = bytes(64)
    path = tmp_path / "corrupt.xml.bz2"
    path.write_bytes(bytes(data))
    report = dump.DumpReport()
    pages = list(dump.iter_pages(path, report))
    assert 0 < len(pages) < 206 and report.pages == len(pages)
    assert "corrupt" in report.problem and f"the {len(pages)} complete pages" in report.problem


def test_a_corrupt_multistream_stream_is_skipped_and_named(tmp_path: Path) -> None:
    need(MULTI)
    index = MULTI.parent / "enwiktionary-20150224-pages-articles-multistream-index.txt.bz2"
    data = bytearray(MULTI.read_bytes())
    data[261373 + 5000 : 261373 + 5064] = bytes(64)  # inside the second page stream
    path = tmp_path / MULTI.name
    path.write_bytes(bytes(data))
    (tmp_path / index.name).write_bytes(index.read_bytes())
    results = [r for r, _ in run_tasks(open_local(path, [], [], 1 << 16).tasks(None), 1)]
    assert [bool(r.problems) for r in results] == [False, True, False]
    assert "261,373" in results[1].problems[0] and results[1].dropped == {"corrupt_stream": 1}
    good = [r for r, _ in run_tasks(open_local(MULTI, [], [], 1 << 16).tasks(None), 1)]
    assert results[0].docs == good[0].docs and results[2].docs == good[2].docs and not results[1].docs
    assert good[1].docs  # the stream that was lost did hold articles


def test_page_filters() -> None:
    from localtrain.data.wiki import Page

    assert page_drop_reason(Page("Talk:X", 1, 1, False, "text")) == "namespace"
    assert page_drop_reason(Page("X", 0, 1, False, "#REDIRECT [[Y]]")) == "redirect"
    assert page_drop_reason(Page("X", 0, 1, True, "")) == "redirect"
    assert page_drop_reason(Page("Mercury", 0, 1, False, "'''Mercury''' may be:\n{{Disambiguation|geo}}")) == \
        "disambiguation"
    assert page_drop_reason(Page("X (disambiguation)", 0, 1, False, "X may be")) == "disambiguation"
    assert page_drop_reason(Page("X", 0, 1, False, "Prose.")) is None
