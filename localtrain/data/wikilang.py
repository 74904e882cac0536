"""What the wiki cleaner knows about each language, as data: one table to extend.

A dump names its own namespaces in `<siteinfo>` (dump.read_site reads them), but not
the aliases its wiki also accepts (Turkish `Resim:` for `Dosya:`, Japanese `画像:` for
`ファイル:`, Chinese `文件:`/`分类:` where the dump says `File`/`Category`), nor how its
disambiguation pages and redirects are written. Each `Language` below holds that for one
wiki language; the cleaner uses the union of every row, so a dump is read right whatever
its language, and a row added here is used everywhere at once. Names are compared
without case, with `_` read as a space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MEDIA, FILE, TEMPLATE, HELP, CATEGORY = -2, 6, 10, 12, 14


@dataclass(frozen=True)
class Language:
    """One wiki language: namespace aliases, disambiguation markers, redirect words, image words."""

    namespaces: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Names a link may use for a namespace, by key (the local name and its aliases)."""
    disambiguation_titles: tuple[str, ...] = ()
    """Title suffixes of disambiguation pages, e.g. "(anlam ayrımı)"."""
    disambiguation_templates: tuple[str, ...] = ()
    """Names of templates that mark a page as a disambiguation page."""
    redirects: tuple[str, ...] = ()
    """Redirect magic words besides #REDIRECT."""
    image_words: tuple[str, ...] = ()
    """Image-link parameters in this language (thumb, left, ...), for the residue measure."""
    image_keys: tuple[str, ...] = ()
    """Image-link `key=` parameters in this language (alt=, link=, ...), for the residue measure."""
    pixels: tuple[str, ...] = ()
    """Width units of image links (`220px`), besides px."""


LANGUAGES: dict[str, Language] = {
    "en": Language(
        disambiguation_titles=("(disambiguation)",),
        disambiguation_templates=("dab", "disamb", "hndis", "geodis", "numberdis", "schooldis", "hospitaldis",
                                  "mathdab", "roaddis", "shipindex", "letter-number combination disambiguation"),
        image_words=("thumb", "thumbnail", "frame", "framed", "frameless", "border", "left", "right", "center",
                     "centre", "none", "upright"),
        image_keys=("upright", "alt", "link"),
    ),
    "tr": Language(
        namespaces={MEDIA: ("Medya",), FILE: ("Dosya", "Resim"), TEMPLATE: ("Şablon",), HELP: ("Yardım",),
                    CATEGORY: ("Kategori",)},
        disambiguation_titles=("(anlam ayrımı)",),
        disambiguation_templates=("anlam ayrımı", "anlam ayrım"),
        redirects=("#YÖNLENDİRME", "#YÖNLENDİR"),
        image_words=("küçükresim", "küçük", "sağ", "sol", "orta", "yok", "çerçeveli", "çerçevesiz", "dikey"),
        image_keys=("dikey", "bağlantı", "sayfa"),
        pixels=("pik", "piksel"),
    ),
    "zh": Language(
        namespaces={MEDIA: ("媒体", "媒體"), FILE: ("文件", "档案", "檔案", "图像", "圖像", "图片"),
                    TEMPLATE: ("模板", "样板", "樣板"), HELP: ("帮助", "幫助", "说明"), CATEGORY: ("分类", "分類")},
        disambiguation_titles=("(消歧义)", "(消歧義)"),
        disambiguation_templates=("消歧义", "消歧義"),
        redirects=("#重定向",),
    ),
    "ja": Language(
        namespaces={MEDIA: ("メディア",), FILE: ("ファイル", "画像"), TEMPLATE: ("テンプレート",), HELP: ("ヘルプ",),
                    CATEGORY: ("カテゴリ",)},
        disambiguation_titles=("(曖昧さ回避)",),
        disambiguation_templates=("aimai", "曖昧さ回避", "人名の曖昧さ回避", "地名の曖昧さ回避"),
        redirects=("#転送", "#リダイレクト", "＃転送", "＃リダイレクト"),
        image_words=("サムネイル", "右", "左", "中央", "なし", "無し", "フレーム", "フレームなし", "境界", "右上"),
        image_keys=("代替文", "代替画像", "リンク", "ページ", "サムネイル"),
        pixels=("ピクセル",),
    ),
    "vi": Language(
        namespaces={MEDIA: ("Phương tiện",), FILE: ("Tập tin", "Hình"), TEMPLATE: ("Bản mẫu", "Tiêu bản"),
                    HELP: ("Trợ giúp",), CATEGORY: ("Thể loại",)},
        disambiguation_titles=("(định hướng)",),
        disambiguation_templates=("trang định hướng", "định hướng"),
        redirects=("#đổi",),
        image_words=("nhỏ", "phải", "trái", "giữa", "không", "khung"),
    ),
    "ru": Language(
        namespaces={MEDIA: ("Медиа",), FILE: ("Файл", "Изображение"), TEMPLATE: ("Шаблон",), HELP: ("Справка",),
                    CATEGORY: ("Категория",)},
        disambiguation_titles=("(значения)",),
        disambiguation_templates=("неоднозначность", "многозначность"),
        redirects=("#ПЕРЕНАПРАВЛЕНИЕ", "#ПЕРЕНАПР"),
        image_words=("мини", "миниатюра", "справа", "слева", "центр", "без", "обрамить", "безрамки",
                     "сверхусправа", "граница"),
        image_keys=("сверхусправа", "альт", "ссылка", "страница"),
        pixels=("пкс",),
    ),
    # Wikis known here by their disambiguation pages only: their namespaces come from their dumps.
    "uk": Language(disambiguation_titles=("(значення)",), disambiguation_templates=("неоднозначність",)),
    "de": Language(disambiguation_titles=("(Begriffsklärung)",), disambiguation_templates=("begriffsklärung",)),
    "fr": Language(disambiguation_titles=("(homonymie)",), disambiguation_templates=("homonymie",)),
    "es": Language(disambiguation_titles=("(desambiguación)",), disambiguation_templates=("desambiguación",)),
    "it": Language(disambiguation_titles=("(disambigua)",), disambiguation_templates=("disambigua",)),
    "pt": Language(disambiguation_titles=("(desambiguação)",), disambiguation_templates=("desambiguação",)),
    "pl": Language(disambiguation_titles=("(ujednoznacznienie)",),
                   disambiguation_templates=("ujednoznacznienie",)),
    "cs": Language(disambiguation_titles=("(rozcestník)",), disambiguation_templates=("rozcestník",)),
    "fi": Language(disambiguation_titles=("(täsmennyssivu)",), disambiguation_templates=("täsmennyssivu",)),
    "ko": Language(disambiguation_titles=("(동음이의)",), disambiguation_templates=("동음이의",)),
    "ar": Language(disambiguation_titles=("(توضيح)",), disambiguation_templates=("توضيح",)),
    "he": Language(disambiguation_titles=("(פירושונים)",), disambiguation_templates=("פירושונים",)),
    "id": Language(disambiguation_titles=("(disambiguasi)",)),
}

# MediaWiki's canonical names, valid on every wiki whatever its language.
CANONICAL: dict[int, tuple[str, ...]] = {
    -2: ("Media",), -1: ("Special",), 1: ("Talk",), 2: ("User",), 3: ("User talk",), 4: ("Project",),
    5: ("Project talk",), FILE: ("File", "Image"), 7: ("File talk", "Image talk"), 8: ("MediaWiki",),
    9: ("MediaWiki talk",), TEMPLATE: ("Template",), 11: ("Template talk",), HELP: ("Help",), 13: ("Help talk",),
    CATEGORY: ("Category",), 15: ("Category talk",), 828: ("Module",), 829: ("Module talk",),
}
# Namespaces whose links are not text: the file or category they name is dropped.
DROPPED_NAMESPACES = frozenset({MEDIA, FILE, CATEGORY})
# Interwiki prefixes to sister projects: the link's text stays, without the prefix.
INTERWIKI = frozenset({"w", "wikipedia", "wikt", "wiktionary", "commons", "c", "m", "meta", "s", "wikisource",
                       "q", "wikiquote", "b", "wikibooks", "n", "wikinews", "v", "wikiversity", "voy",
                       "wikivoyage", "species", "wikispecies", "d", "wikidata", "mw", "mediawikiwiki",
                       "foundation", "wmf", "incubator", "phab"})
DISAMBIGUATION_MAGIC = "__DISAMBIG__"
# A template whose name holds this word marks a disambiguation page in most wikis ({{Disambig}},
# {{Geo disambig}}, ...), except the inline request {{Disambiguation needed}}.
DISAMBIGUATION_WORD = "disambig"


def _all(attr: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w for lang in LANGUAGES.values() for w in getattr(lang, attr)))


DISAMBIGUATION_TITLES = _all("disambiguation_titles")
DISAMBIGUATION_TEMPLATES = _all("disambiguation_templates")
REDIRECTS = ("#REDIRECT", *_all("redirects"))
IMAGE_WORDS = _all("image_words")
IMAGE_KEYS = _all("image_keys")
PIXELS = ("px", *_all("pixels"))


def namespace_aliases() -> dict[int, tuple[str, ...]]:
    """Every name the table knows for each namespace: the canonical ones first, then each language's."""
    names: dict[int, list[str]] = {k: list(v) for k, v in CANONICAL.items()}
    for lang in LANGUAGES.values():
        for key, aliases in lang.namespaces.items():
            names.setdefault(key, []).extend(aliases)
    return {k: tuple(dict.fromkeys(v)) for k, v in names.items()}
