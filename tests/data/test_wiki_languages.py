"""Wikipedia in other languages: the dump's namespaces, disambiguation without English, the residue measure.

The dumps are built by wikidumps.py (trwiki, zhwiki, jawiki, viwiki, ruwiki, each with its
real <namespaces>); what each page is and what each article must keep is written there
by hand.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from localtrain.data import dump, wiki
from localtrain.data.dumpsource import MultistreamSource
from localtrain.data.local import open_local
from localtrain.data.stream import run_tasks
from localtrain.data.residue import residue
from localtrain.data.wiki import Page, page_drop_reason
from wikidumps import KINDS, LANGUAGES, LEAKS, PAGES, PROSE, header_xml, write_dump, write_multistream


def read(path: Path, workers: int = 1) -> tuple[list, dict[str, int], wiki.Site]:
    source = open_local(path, [], [], 1 << 16)
    docs, dropped = [], collections.Counter()
    for result, _ in run_tasks(source.tasks(None), workers):
        docs.extend(result.docs)
        dropped.update(result.dropped)
    site = source.site if isinstance(source, MultistreamSource) else source.report.site
    return docs, dict(dropped), site


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_article_kept_every_disambiguation_and_redirect_dropped(lang: str, tmp_path: Path) -> None:
    docs, dropped, site = read(write_dump(lang, tmp_path))
    kinds = KINDS[lang]
    assert [d.title for d in docs] == [t for t, *_ in PAGES[lang] if kinds[t] == "article"]
    assert dropped == dict(collections.Counter(k for k in kinds.values() if k != "article"))
    for doc in docs:
        for sentence in PROSE[lang][doc.title]:
            assert sentence in doc.text, (doc.title, sentence, doc.text)
        leaked = [s for s in LEAKS[lang] if s in doc.text]
        assert not leaked, (doc.title, leaked, doc.text)
    measured = residue([d.text for d in docs], site)
    assert measured.chars == 0 and measured.total > 150, measured.examples


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_multistream_dump_reads_its_header_stream_for_the_namespaces(lang: str, tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "multi").mkdir()
    whole, dropped, _ = read(write_dump(lang, tmp_path / "one"))
    path = write_multistream(lang, tmp_path / "multi")
    source = open_local(path, [], [], 1 << 16)
    assert isinstance(source, MultistreamSource) and len(source.streams) == 5
    for workers in (1, 2):
        assert read(path, workers)[:2] == (whole, dropped)
    # Resumed at a later stream, the pages there still know the wiki's namespaces.
    cursor = list(source.tasks(None))[0][2]
    rest = [d for result, _ in run_tasks(source.tasks(cursor), 1) for d in result.docs]
    assert rest == whole[len(whole) - len(rest):] and rest


def test_the_header_names_local_namespaces_and_the_table_adds_aliases(tmp_path: Path) -> None:
    sites = {lang: dump.read_site(header_xml(lang).encode()) for lang in LANGUAGES}
    file_names = {"tr": ["Dosya", "Resim", "dosya"], "zh": ["File", "文件", "檔案", "图像", "Image"],
                  "ja": ["ファイル", "画像", "File"], "vi": ["Tập tin", "Tập_tin", "Hình"],
                  "ru": ["Файл", "Изображение", "файл"]}
    category_names = {"tr": ["Kategori", "KATEGORİ"], "zh": ["Category", "分类", "分類"], "ja": ["Category", "カテゴリ"],
                      "vi": ["Thể loại", "thể  loại"], "ru": ["Категория", "Category"]}
    for lang, site in sites.items():
        assert all(site.namespace(n) == 6 for n in file_names[lang]), lang
        assert all(site.namespace(n) == 14 for n in category_names[lang]), lang
        assert site.namespace("Re") is None and site.namespace("Ankara") is None
    # Namespaces only the dump's own header names, found in no table.
    assert sites["ru"].namespace("Инкубатор") == 102 and sites["ru"].namespace("Арбитраж") == 106
    assert sites["vi"].namespace("Cổng thông tin") == 100 and sites["tr"].namespace("Vikipedi") == 4
    assert sites["ja"].namespace("プロジェクト") == 102 and sites["zh"].namespace("Topic") == 2600
    assert dump.read_site(b"<mediawiki>").namespace("Image") == 6  # no <siteinfo>: the canonical names


@pytest.mark.parametrize("layout", ["dump", "multistream"])
def test_a_wiki_the_table_does_not_know_is_cleaned_from_its_own_header(layout: str, tmp_path: Path) -> None:
    # A German dump: Datei and Kategorie are in its header only.
    header = header_xml("tr").replace('xml:lang="tr"', 'xml:lang="de"')
    for key, name, german in ((6, "Dosya", "Datei"), (14, "Kategori", "Kategorie")):
        header = header.replace(f'key="{key}" case="first-letter">{name}<',
                                f'key="{key}" case="first-letter">{german}<')
    text = ("'''Berlin''' ist die Hauptstadt Deutschlands.\n[[Datei:Berlin Brandenburger Tor.jpg|mini|links|"
            "200px|Das [[Brandenburger Tor]]]]\n[[Kategorie:Hauptstadt in Europa]]\n[[en:Berlin]]")
    pages = [("Berlin", 0, None, text), ("Hamburg", 0, None, text.replace("Berlin", "Hamburg"))]
    write = write_dump if layout == "dump" else write_multistream
    docs, _, site = read(write("tr", tmp_path, pages=pages, header=header))
    assert [d.text for d in docs] == [f"{city} ist die Hauptstadt Deutschlands." for city in ("Berlin", "Hamburg")]
    assert residue(["Kategorie:Hauptstadt in Europa"], site).chars > 0
    assert residue(["Kategorie:Hauptstadt in Europa"], wiki.DEFAULT_SITE).chars == 0  # known from the header only


@pytest.mark.parametrize("title, text, reason", [
    ("Ankara (anlam ayrımı)", "'''Ankara''' şu anlamlara gelebilir:", "disambiguation"),
    ("长城 (消歧义)", "'''长城'''可以指：", "disambiguation"),
    ("長城 (消歧義)", "'''長城'''可以指：", "disambiguation"),
    ("EU (曖昧さ回避)", "'''EU'''", "disambiguation"),
    ("Hà Nội (định hướng)", "'''Hà Nội''' có thể là:", "disambiguation"),
    ("Москва (значения)", "'''Москва''':", "disambiguation"),
    ("Mercury (disambiguation)", "'''Mercury''' may be:", "disambiguation"),
    ("Kızılay", "* [[Türk Kızılay]]\n{{Anlam_ayrımı}}", "disambiguation"),
    ("カイロ", "* [[カイロ (暖房器具)]]\n{{Aimai}}", "disambiguation"),
    ("Волга", "* [[ГАЗ-21]]\n{{неоднозначность|тип=марки}}", "disambiguation"),
    ("Hồng Hà", "* [[sông Hồng]]\n__DISAMBIG__", "disambiguation"),
    ("Mercury", "'''Mercury''' may be:\n{{Disambiguation|geo}}", "disambiguation"),
    ("Angora", "#YÖNLENDİRME [[Ankara]]", "redirect"),
    ("Engürü", "#yönlendir [[Ankara]]", "redirect"),
    ("埃及", "#転送 [[エジプト]]", "redirect"),
    ("長城", "#重定向 [[长城]]", "redirect"),
    ("Hanoi", "#ĐỔI [[Hà Nội]]", "redirect"),
    ("Мосвка", "#перенаправление [[Москва]]", "redirect"),
    # Hatnotes and requests that point at a disambiguation page are articles.
    ("Ankara", "{{Diğer anlamlar|Ankara (anlam ayrımı)}}\n'''Ankara''' başkenttir.", None),
    ("エジプト", "{{Otheruses|国|その他|エジプト (曖昧さ回避)}}\n本文。", None),
    ("Москва", "{{Другие значения|Москва (значения)}}\nСтолица.", None),
    ("Hà Nội", "{{Về|thủ đô|các nghĩa khác|Hà Nội (định hướng)}}\nThủ đô.", None),
    ("Mercury (planet)", "The [[Mercury]]{{Disambiguation needed|date=May 2020}} planet.", None),
    ("Re:ゼロから始める異世界生活", "『Re:ゼロ』は小説である。", None),
])
def test_disambiguation_and_redirects_in_every_language(title: str, text: str, reason: str | None) -> None:
    assert page_drop_reason(Page(title, 0, 1, False, text)) == reason


@pytest.mark.parametrize("text, leak", [
    ("thumb|center|upright=3.0|ノートルダム大聖堂付近のパノラマ", "thumb|"),
    ("カイロのモスク|代替文=カイロのモスクの外観", "代替文="),
    ("Saturated C4 hydrocarbons ball-and-stick.png|220px|Different C4 alkanes", "220px|"),
    ("A caption|alt=A portrait", "alt="),
    ("Thể loại:Internet", "Thể loại:"),
    ("Kategori:Türkiye gölleri", "Kategori:"),
    ("関連分野はCategory:社会言語学である。", "Category:"),
    ("Файл:Volga river.jpg", "Файл:"),
    ("Tom &amp; Jerry", "&amp;"),
    ("Text <!-- hidden", "<!--"),
    ("a '''bold''' word", "'''"),
    ("see [http://example.org the site", "[http://"),
    ("{{cite web|title=T", "{{"),
    ("a <span>tag</span> here", "<span>"),
    ("| 1927 || 74 553", "| 1927 || 74 553"),
    ("end of a table |}", "|}"),
    ("__NOTOC__ then text", "__NOTOC__"),
])
def test_the_residue_measure_counts_each_kind_of_leak(text: str, leak: str) -> None:
    measured = residue([text])
    assert any(leak in found for found in measured.examples), measured.examples


def test_the_residue_measure_counts_nothing_in_prose() -> None:
    prose = ["Ankara, Türkiye'nin başkenti ve en kalabalık ikinci şehridir.", "『Re:ゼロから始める異世界生活』は小説である。",
             "Москва́ — столица России. Файлы и категории: не разметка.", "长城是中国古代的军事防御工程：全长两万公里。",
             "Ratio 3:2, at 10:30, a C++ program and 5 > 3.", "The category: a word in a sentence."]
    measured = residue(prose)
    assert measured.chars == 0, measured.examples
