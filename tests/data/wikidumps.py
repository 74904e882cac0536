"""Small MediaWiki dumps of five wikis, written as the real ones are, for the language tests.

Each wiki has its real `<siteinfo>` (sitename, dbname, base, generator and the
`<namespaces>` block of trwiki, zhwiki, jawiki, viwiki and ruwiki), and pages that use
what those wikis use: file and category links in the local and the English names and
their aliases, localized image parameters, galleries, references, tables, infoboxes,
interlanguage and interwiki links, hatnotes, localized magic words, disambiguation pages
(by title suffix, by template, by __DISAMBIG__), redirects (marked by the dump, and by a
localized redirect word alone) and pages of other namespaces.

`KINDS` says what each page is, written here by hand and not computed by the code under
test; `PROSE` holds sentences each article must keep word for word, and `LEAKS` strings no
cleaned article may hold (image parameters, namespace prefixes, gallery captions, file
names, category names, interlanguage prefixes).
"""

from __future__ import annotations

import bz2
from pathlib import Path
from xml.sax.saxutils import escape

HEAD = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.mediawiki.org/xml/export-0.10/ http://www.mediawiki.org/xml/export-0.10.xsd" '
        'version="0.10" xml:lang="{lang}">\n')

# (sitename, dbname, base, generator, namespaces as (key, case, name))
SITEINFO: dict[str, tuple[str, str, str, str, list[tuple[int, str, str]]]] = {
    "tr": ("Vikipedi", "trwiki", "https://tr.wikipedia.org/wiki/Anasayfa", "MediaWiki 1.39.0-wmf.7", [
        (-2, "first-letter", "Medya"), (-1, "first-letter", "Özel"), (0, "first-letter", ""),
        (1, "first-letter", "Tartışma"), (2, "first-letter", "Kullanıcı"), (3, "first-letter", "Kullanıcı mesaj"),
        (4, "first-letter", "Vikipedi"), (5, "first-letter", "Vikipedi tartışma"), (6, "first-letter", "Dosya"),
        (7, "first-letter", "Dosya tartışma"), (8, "first-letter", "MediaWiki"),
        (9, "first-letter", "MediaWiki tartışma"), (10, "first-letter", "Şablon"),
        (11, "first-letter", "Şablon tartışma"), (12, "first-letter", "Yardım"),
        (13, "first-letter", "Yardım tartışma"),
        (14, "first-letter", "Kategori"), (15, "first-letter", "Kategori tartışma"), (100, "first-letter", "Portal"),
        (101, "first-letter", "Portal tartışma"), (828, "first-letter", "Modül"),
        (829, "first-letter", "Modül tartışma")]),
    "zh": ("Wikipedia", "zhwiki", "https://zh.wikipedia.org/wiki/Wikipedia:%E9%A6%96%E9%A1%B5",
           "MediaWiki 1.38.0-wmf.19", [
        (-2, "first-letter", "Media"), (-1, "first-letter", "Special"), (0, "first-letter", ""),
        (1, "first-letter", "Talk"), (2, "first-letter", "User"), (3, "first-letter", "User talk"),
        (4, "first-letter", "Wikipedia"), (5, "first-letter", "Wikipedia talk"), (6, "first-letter", "File"),
        (7, "first-letter", "File talk"), (8, "first-letter", "MediaWiki"), (9, "first-letter", "MediaWiki talk"),
        (10, "first-letter", "Template"), (11, "first-letter", "Template talk"), (12, "first-letter", "Help"),
        (13, "first-letter", "Help talk"), (14, "first-letter", "Category"), (15, "first-letter", "Category talk"),
        (100, "first-letter", "Portal"), (101, "first-letter", "Portal talk"), (102, "first-letter", "WikiProject"),
        (103, "first-letter", "WikiProject talk"), (118, "first-letter", "Draft"), (119, "first-letter", "Draft talk"),
        (828, "first-letter", "Module"), (829, "first-letter", "Module talk"), (2300, "first-letter", "Gadget"),
        (2301, "first-letter", "Gadget talk"), (2302, "case-sensitive", "Gadget definition"),
        (2303, "case-sensitive", "Gadget definition talk"), (2600, "first-letter", "Topic")]),
    "ja": ("Wikipedia", "jawiki",
           "https://ja.wikipedia.org/wiki/%E3%83%A1%E3%82%A4%E3%83%B3%E3%83%9A%E3%83%BC%E3%82%B8",
           "MediaWiki 1.39.0-wmf.5", [
        (-2, "first-letter", "メディア"), (-1, "first-letter", "特別"), (0, "first-letter", ""),
        (1, "first-letter", "ノート"), (2, "first-letter", "利用者"), (3, "first-letter", "利用者‐会話"),
        (4, "first-letter", "Wikipedia"), (5, "first-letter", "Wikipedia‐ノート"), (6, "first-letter", "ファイル"),
        (7, "first-letter", "ファイル‐ノート"), (8, "first-letter", "MediaWiki"), (9, "first-letter", "MediaWiki‐ノート"),
        (10, "first-letter", "Template"), (11, "first-letter", "Template‐ノート"), (12, "first-letter", "Help"),
        (13, "first-letter", "Help‐ノート"), (14, "first-letter", "Category"), (15, "first-letter", "Category‐ノート"),
        (100, "first-letter", "Portal"), (101, "first-letter", "Portal‐ノート"), (102, "first-letter", "プロジェクト"),
        (103, "first-letter", "プロジェクト‐ノート"), (828, "first-letter", "モジュール"),
        (829, "first-letter", "モジュール‐ノート")]),
    "vi": ("Wikipedia", "viwiki", "https://vi.wikipedia.org/wiki/Trang_Ch%C3%ADnh", "MediaWiki 1.39.0-wmf.7", [
        (-2, "first-letter", "Phương tiện"), (-1, "first-letter", "Đặc biệt"), (0, "first-letter", ""),
        (1, "first-letter", "Thảo luận"), (2, "first-letter", "Thành viên"),
        (3, "first-letter", "Thảo luận Thành viên"),
        (4, "first-letter", "Wikipedia"), (5, "first-letter", "Thảo luận Wikipedia"), (6, "first-letter", "Tập tin"),
        (7, "first-letter", "Thảo luận Tập tin"), (8, "first-letter", "MediaWiki"),
        (9, "first-letter", "Thảo luận MediaWiki"), (10, "first-letter", "Bản mẫu"),
        (11, "first-letter", "Thảo luận Bản mẫu"), (12, "first-letter", "Trợ giúp"),
        (13, "first-letter", "Thảo luận Trợ giúp"), (14, "first-letter", "Thể loại"),
        (15, "first-letter", "Thảo luận Thể loại"), (100, "first-letter", "Cổng thông tin"),
        (101, "first-letter", "Thảo luận Cổng thông tin"), (828, "first-letter", "Mô đun"),
        (829, "first-letter", "Thảo luận Mô đun")]),
    "ru": ("Википедия", "ruwiki",
           "https://ru.wikipedia.org/wiki/%D0%97%D0%B0%D0%B3%D0%BB%D0%B0%D0%B2%D0%BD%D0%B0%D1%8F_"
           "%D1%81%D1%82%D1%80%D0%B0%D0%BD%D0%B8%D1%86%D0%B0", "MediaWiki 1.39.0-wmf.7", [
        (-2, "first-letter", "Медиа"), (-1, "first-letter", "Служебная"), (0, "first-letter", ""),
        (1, "first-letter", "Обсуждение"), (2, "first-letter", "Участник"), (3, "first-letter", "Обсуждение участника"),
        (4, "first-letter", "Википедия"), (5, "first-letter", "Обсуждение Википедии"), (6, "first-letter", "Файл"),
        (7, "first-letter", "Обсуждение файла"), (8, "first-letter", "MediaWiki"),
        (9, "first-letter", "Обсуждение MediaWiki"), (10, "first-letter", "Шаблон"),
        (11, "first-letter", "Обсуждение шаблона"), (12, "first-letter", "Справка"),
        (13, "first-letter", "Обсуждение справки"), (14, "first-letter", "Категория"),
        (15, "first-letter", "Обсуждение категории"), (100, "first-letter", "Портал"),
        (101, "first-letter", "Обсуждение портала"), (102, "first-letter", "Инкубатор"),
        (103, "first-letter", "Обсуждение Инкубатора"), (104, "first-letter", "Проект"),
        (105, "first-letter", "Обсуждение проекта"), (106, "first-letter", "Арбитраж"),
        (107, "first-letter", "Обсуждение арбитража"), (828, "first-letter", "Модуль"),
        (829, "first-letter", "Обсуждение модуля"), (2300, "first-letter", "Гаджет"),
        (2301, "first-letter", "Обсуждение гаджета"), (2302, "case-sensitive", "Определение гаджета"),
        (2303, "case-sensitive", "Обсуждение определения гаджета")]),
}

# (title, ns, redirect target or None when the dump does not mark one, wikitext)
Page = tuple[str, int, "str | None", str]

PAGES: dict[str, list[Page]] = {
    "tr": [
        ("Ankara", 0, None, """{{Diğer anlamlar|Ankara (anlam ayrımı)}}
{{Bilgi kutusu yerleşim
| ad = Ankara
| resim = Ankara Kalesi.jpg
| nüfus = {{formatnum:5663322}}<ref name="tuik">{{Web kaynağı|url=https://www.tuik.gov.tr|başlık=Nüfus}}</ref>
}}
'''Ankara''', [[Türkiye]]'nin [[başkent]]i ve en kalabalık ikinci şehridir.<ref name="tuik"/> Şehir, [[İç Anadolu Bölgesi]]'nin ortasında yer alır.
[[Dosya:Ankara Kalesi.jpg|küçükresim|sağ|250px|[[Ankara Kalesi]] ve eski şehir]]
[[File:Anitkabir 2012.jpg|thumb|upright=1.2|alt=Anıtkabir'in cephesi|[[Anıtkabir]]]]
[[Resim:Ankara Logo.png|sol|80px]]
__İÇİNDEKİLER__
== Tarih ==
Antik çağda şehrin adı ''Ankyra'' idi. <!-- kaynak aranıyor --> 1923'te Cumhuriyet'in başkenti oldu&nbsp;ve hızla büyüdü.
{| class="wikitable"
|-
! Yıl !! Nüfus
|-
| 1927 || 74&nbsp;553
|}
== Galeri ==
<gallery mode="packed">
Dosya:Kocatepe Camii.jpg|Kocatepe Camii galeri açıklaması
File:Ankara Gençlik Parkı.jpg|Gençlik Parkı galeri açıklaması
</gallery>
Şehrin simgesi [[Medya:Ankara Marşı.ogg|Ankara Marşı]] ile bilinir.
== Kaynakça ==
{{Kaynakça}}
{{DEFAULTSORT:Ankara}}
[[Kategori:Türkiye'nin illeri|Ankara]]
[[Category:Başkentler]]
[[en:Ankara]]
[[ja:アンカラ]]
[[zh-min-nan:Ankara]]"""),
        ("Kızılay (Ankara)", 0, None, """'''Kızılay''', Ankara'nın merkezinde bir semttir ve şehrin ulaşım düğümüdür.
[[Dosya:Kızılay Meydanı.jpg|küçük|Kızılay Meydanı]]
Semtin adı [[Türk Kızılay]]'dan gelir; ayrıca bkz. [[:Kategori:Ankara'nın semtleri|Ankara'nın semtleri]].
Kelimenin anlamı için [[vikisözlük:kızılay|Vikisözlük]] ve [[wikt:semt|semt]] maddesine bakınız.
* [https://www.ankara.bel.tr Ankara Büyükşehir Belediyesi] &amp; ilçe belediyesi
[[Kategori:Ankara'nın semtleri]]"""),
        ("Van Gölü", 0, None, """'''Van Gölü''' Türkiye'nin en büyük gölüdür.<ref>{{Kitap kaynağı|yazar=X|başlık=Göller}}</ref> Suyu sodalıdır.<br />Gölde [[inci kefali]] yaşar.
<gallery>
Resim:Van Gölü.jpg|göl galeri açıklaması
</gallery>
[[Kategori:Türkiye gölleri]]"""),
        ("Ankara (anlam ayrımı)", 0, None, """'''Ankara''' şu anlamlara gelebilir:
* [[Ankara]], Türkiye'nin başkenti
* [[Ankara (il)]], Türkiye'nin bir ili
{{anlam ayrımı}}"""),
        ("Kızılay", 0, None, """'''Kızılay''' şu anlamlara gelebilir:
* [[Türk Kızılay]]
* [[Kızılay (Ankara)]]
{{Anlam ayrımı}}"""),
        ("Angora", 0, "Ankara", "#YÖNLENDİRME [[Ankara]]"),
        ("Engürü", 0, None, "#yönlendir [[Ankara]]"),
        ("Şablon:Anlam ayrımı", 10, None, "Bu bir anlam ayrımı sayfasıdır. __DISAMBIG__"),
        ("Kategori:Ankara'nın semtleri", 14, None, "[[Kategori:Ankara]]"),
    ],
    "zh": [
        ("长城", 0, None, """{{about|中国古代的军事防御工程|其他用法|长城 (消歧义)}}
{{Infobox World Heritage Site
| Name = 长城
| Image = [[File:GreatWall 2004 Summer 4.jpg|250px]]
}}
'''长城'''是[[中国]]古代的军事防御工程，修筑的历史可上溯到[[西周]]时期。<ref>{{cite web|url=http://example.org|title=长城}}</ref>
[[文件:Great wall of china-mutianyu 4.JPG|thumb|right|220px|[[慕田峪]]长城]]
[[File:Badaling Great Wall.jpg|thumb|upright=1.3|alt=八达岭|[[八达岭]]长城]]
[[图像:Jinshanling Great Wall.jpg|left|150px|金山岭长城]]
== 历史 ==
[[秦始皇]]统一中国后，将各国的长城连接起来，史称“万里长城”。<!-- 需要来源 -->明代的长城大部分保存至今&amp;仍可参观。
{| class="wikitable"
! 朝代 !! 长度
|-
| 明 || 8,851.8公里
|}
== 图集 ==
<gallery>
File:Great Wall at Jinshanling.jpg|金山岭图集说明
文件:Mutianyu Great Wall.jpg|慕田峪图集说明
</gallery>
== 参考文献 ==
{{reflist}}
[[分类:中国长城|*]]
[[Category:世界遗产]]
[[en:Great Wall of China]]
[[ja:万里の長城]]"""),
        ("黄河", 0, None, """'''黄河'''是[[中国]]第二长河，全长约5464公里。
[[檔案:Yellow River Hukou.jpg|thumb|[[壶口瀑布]]]]
黄河流域是中华文明的发祥地之一，详见[[:分类:黄河|黄河分类]]与[[wikt:河|河]]的释义。
* [http://www.yrcc.gov.cn 黄河水利委员会]
[[分類:中国河流]]"""),
        ("北京", 0, None, """'''北京'''，简称“京”，是[[中华人民共和国]]的首都。
[[File:Beijing montage.jpg|thumb|北京]]
北京有三千多年建城史。__TOC__
[[Category:中国城市]]"""),
        ("长城 (消歧义)", 0, None, """'''长城'''可以指：
* [[长城]]，中国古代的军事防御工程
* [[长城汽车]]
{{disambig}}"""),
        ("黄河 (消歧義)", 0, None, """'''黄河'''可以指：
* [[黄河]]
* [[黄河 (电视剧)]]
{{消歧義}}"""),
        ("万里长城", 0, "长城", "#重定向 [[长城]]"),
        ("長城", 0, None, "#REDIRECT [[长城]]"),
        ("Template:消歧义", 10, None, "这是一个消歧义页。__DISAMBIG__"),
        ("Category:中国长城", 14, None, "[[Category:长城]]"),
    ],
    "ja": [
        ("エジプト", 0, None, """{{Otheruses|国|その他|エジプト (曖昧さ回避)}}
{{基礎情報 国
| 略名 = エジプト
| 画像 = Flag of Egypt.svg
}}
'''エジプト・アラブ共和国'''、通称'''エジプト'''は、[[中東]]および[[アフリカ]]に位置する[[共和制]][[国家]]である。<ref>{{Cite web|url=http://example.org|title=エジプト}}</ref>首都は[[カイロ]]。
[[ファイル:Cairo mosque.jpg|thumb|220px|[[カイロ]]のモスク|代替文=カイロのモスクの外観]]
[[File:Nile River.jpg|サムネイル|右|upright=1.2|alt=ナイル川|[[ナイル川]]]]
[[画像:Pyramids of Giza.jpg|左|150px|ギザの三大ピラミッド]]
__目次__
== 歴史 ==
古代エジプトでは[[ナイル川]]の流域に文明が栄えた。<!-- 出典不明 -->[[1952年]]の革命で共和制となった&amp;現在に至る。
{| class="wikitable"
! 年 !! 出来事
|-
| 1952 || 革命
|}
関連する分野として[[:Category:社会言語学|社会言語学]]がある。
== ギャラリー ==
<gallery>
ファイル:Abu Simbel.jpg|アブ・シンベル神殿のギャラリー説明
File:Alexandria.jpg|アレクサンドリアのギャラリー説明
</gallery>
== 脚注 ==
{{Reflist}}
{{DEFAULTSORT:えしふと}}
[[Category:エジプト|*]]
[[カテゴリ:アフリカの国]]
[[en:Egypt]]
[[zh:埃及]]"""),
        ("ノートルダム大聖堂", 0, None, """'''ノートルダム大聖堂'''は、[[フランス]]の[[パリ]]にある[[ゴシック建築]]の大聖堂である。
[[ファイル:Notre Dame panorama.jpg|thumb|center|upright=3.0|ノートルダム大聖堂付近のパノラマ]]
[[Image:Notre-Dame de Paris.jpg|thumb|[[セーヌ川]]から見た大聖堂]]
詳しくは[[wikt:大聖堂|大聖堂]]の語義を参照。
* [https://www.notredamedeparis.fr 公式サイト]
[[Category:パリの教会]]"""),
        ("Re:ゼロから始める異世界生活", 0, None, """『'''Re:ゼロから始める異世界生活'''』は、[[長月達平]]による[[ライトノベル]]である。略称は「[[Re:ゼロから始める異世界生活|リゼロ]]」。
[[ファイル:Rezero logo.png|thumb|ロゴ]]
[[Category:ライトノベル]]"""),
        ("EU (曖昧さ回避)", 0, None, """'''EU'''
* [[欧州連合]]（European Union）の略称。
* [[ユーロピウム]]の元素記号。
{{aimai}}"""),
        ("カイロ", 0, None, """'''カイロ'''は以下を指す。
* [[カイロ]] - エジプトの首都。
* [[カイロ (暖房器具)]]
__DISAMBIG__"""),
        ("埃及", 0, "エジプト", "#転送 [[エジプト]]"),
        ("エヂプト", 0, None, "#リダイレクト [[エジプト]]"),
        ("Template:Aimai", 10, None, "このページは曖昧さ回避のためのページです。__DISAMBIG__"),
        ("Category:エジプト", 14, None, "[[Category:アフリカの国]]"),
    ],
    "vi": [
        ("Hà Nội", 0, None, """{{Về|thủ đô của Việt Nam|các nghĩa khác|Hà Nội (định hướng)}}
{{Thông tin khu dân cư
| tên = Hà Nội
| hình = Hanoi skyline.jpg
}}
'''Hà Nội''' là [[thủ đô]] của nước [[Cộng hòa xã hội chủ nghĩa Việt Nam]].<ref>{{Chú thích web|url=http://example.org|tiêu đề=Hà Nội}}</ref> Thành phố nằm bên bờ [[sông Hồng]].
[[Tập tin:Hoan Kiem Lake.jpg|nhỏ|phải|250px|[[Hồ Hoàn Kiếm]] vào buổi sáng]]
[[File:One Pillar Pagoda.jpg|thumb|upright=1.2|alt=Chùa Một Cột|[[Chùa Một Cột]]]]
[[Hình:Temple of Literature.jpg|trái|150px|Văn Miếu]]
== Lịch sử ==
Năm 1010, [[Lý Thái Tổ]] dời đô về [[Thăng Long]].<!-- cần nguồn --> Thành phố có lịch sử hơn một nghìn năm&nbsp;tuổi.
{| class="wikitable"
! Năm !! Dân số
|-
| 2019 || 8.053.663
|}
== Hình ảnh ==
<gallery>
Tập tin:Long Bien Bridge.jpg|Cầu Long Biên mô tả thư viện
File:Hanoi Opera House.jpg|Nhà hát Lớn mô tả thư viện
</gallery>
== Tham khảo ==
{{Tham khảo}}
[[Thể loại:Thủ đô châu Á|Hà Nội]]
[[Category:Thành phố của Việt Nam]]
[[en:Hanoi]]
[[fr:Hanoï]]"""),
        ("Internet", 0, None, """'''Internet''' là một hệ thống thông tin toàn cầu có thể được truy nhập công cộng.
[[Tập tin:Internet map.png|nhỏ|Bản đồ Internet]]
Xem thêm [[:Thể loại:Internet|các bài về Internet]] và [[wikt:mạng|mạng]].
* [https://www.isoc.org Hiệp hội Internet]
[[Thể loại:Internet]]
[[Thể loại:Tổ chức quốc tế]]"""),
        ("Phở", 0, None, """'''Phở''' là một món ăn truyền thống của [[Việt Nam]].<br />Thành phần chính là bánh phở và nước dùng.
<gallery>
Hình:Pho bo.jpg|phở bò mô tả thư viện
</gallery>
[[Thể loại:Ẩm thực Việt Nam]]"""),
        ("Hà Nội (định hướng)", 0, None, """'''Hà Nội''' có thể là:
* [[Hà Nội]], thủ đô của Việt Nam
* [[Hà Nội (tàu)]]
{{trang định hướng}}"""),
        ("Hồng Hà", 0, None, """'''Hồng Hà''' có thể là:
* [[sông Hồng]]
* [[Hồng Hà (huyện)]]
__DISAMBIG__"""),
        ("Hanoi", 0, "Hà Nội", "#đổi [[Hà Nội]]"),
        ("Thăng Long (thủ đô)", 0, None, "#ĐỔI [[Hà Nội]]"),
        ("Bản mẫu:Trang định hướng", 10, None, "Đây là một trang định hướng. __DISAMBIG__"),
        ("Thể loại:Internet", 14, None, "[[Thể loại:Công nghệ]]"),
    ],
    "ru": [
        ("Москва", 0, None, """{{Другие значения|Москва (значения)}}
{{Карточка города
| Русское название = Москва
| Изображение = Moscow Kremlin.jpg
}}
'''Москва́''' — [[столица]] [[Россия|России]], крупнейший по численности населения город страны.<ref>{{cite web|url=http://example.org|title=Москва}}</ref>
[[Файл:Moscow Kremlin.jpg|мини|справа|250px|[[Московский Кремль]] с реки]]
[[File:Saint Basil's Cathedral.jpg|thumb|upright=1.2|alt=Собор Василия Блаженного|[[Храм Василия Блаженного]]]]
[[Изображение:Moscow City.jpg|слева|150px|Москва-Сити]]
== История ==
Впервые Москва упоминается в летописи в 1147 году.<!-- нужен источник --> В 1918 году она снова стала столицей&nbsp;страны.
{| class="wikitable"
! Год !! Население
|-
| 2021 || 13 010 112
|}
== Галерея ==
<gallery>
Файл:Bolshoi Theatre.jpg|Большой театр подпись галереи
File:Moscow Metro.jpg|метро подпись галереи
</gallery>
== Примечания ==
{{примечания}}
[[Категория:Города-миллионеры России|Москва]]
[[Category:Столицы европейских государств]]
[[en:Moscow]]
[[de:Moskau]]"""),
        ("Волга", 0, None, """'''Волга''' — река в европейской части [[Россия|России]], самая длинная в Европе.
[[Файл:Volga river.jpg|мини|Волга у Ярославля]]
См. также [[:Категория:Реки России|реки России]] и [[wikt:река|река]].
* [http://www.volga.ru Сайт о Волге]
[[Категория:Реки России]]"""),
        ("Байкал", 0, None, """'''Байкал''' — озеро тектонического происхождения.<br />Это самое глубокое озеро на планете.
<gallery>
Изображение:Baikal winter.jpg|зимой подпись галереи
</gallery>
[[Категория:Озёра России]]"""),
        ("Москва (значения)", 0, None, """'''Москва́''':
* [[Москва]] — столица России.
* [[Москва (река)]]
{{неоднозначность}}"""),
        ("Волга (автомобиль)", 0, None, """'''Волга''' — марка автомобилей:
* [[ГАЗ-21]]
* [[ГАЗ-24]]
{{Многозначность}}"""),
        ("Первопрестольная", 0, "Москва", "#перенаправление [[Москва]]"),
        ("Мосвка", 0, None, "#ПЕРЕНАПР [[Москва]]"),
        ("Шаблон:Неоднозначность", 10, None, "Страница значений. __DISAMBIG__"),
        ("Категория:Реки России", 14, None, "[[Категория:Реки]]"),
    ],
}

# What each page is (written by hand, not by the code under test).
KINDS: dict[str, dict[str, str]] = {
    "tr": {"Ankara": "article", "Kızılay (Ankara)": "article", "Van Gölü": "article",
           "Ankara (anlam ayrımı)": "disambiguation", "Kızılay": "disambiguation", "Angora": "redirect",
           "Engürü": "redirect", "Şablon:Anlam ayrımı": "namespace", "Kategori:Ankara'nın semtleri": "namespace"},
    "zh": {"长城": "article", "黄河": "article", "北京": "article", "长城 (消歧义)": "disambiguation",
           "黄河 (消歧義)": "disambiguation", "万里长城": "redirect", "長城": "redirect",
           "Template:消歧义": "namespace", "Category:中国长城": "namespace"},
    "ja": {"エジプト": "article", "ノートルダム大聖堂": "article", "Re:ゼロから始める異世界生活": "article",
           "EU (曖昧さ回避)": "disambiguation", "カイロ": "disambiguation", "埃及": "redirect",
           "エヂプト": "redirect", "Template:Aimai": "namespace", "Category:エジプト": "namespace"},
    "vi": {"Hà Nội": "article", "Internet": "article", "Phở": "article", "Hà Nội (định hướng)": "disambiguation",
           "Hồng Hà": "disambiguation", "Hanoi": "redirect", "Thăng Long (thủ đô)": "redirect",
           "Bản mẫu:Trang định hướng": "namespace", "Thể loại:Internet": "namespace"},
    "ru": {"Москва": "article", "Волга": "article", "Байкал": "article", "Москва (значения)": "disambiguation",
           "Волга (автомобиль)": "disambiguation", "Первопрестольная": "redirect", "Мосвка": "redirect",
           "Шаблон:Неоднозначность": "namespace", "Категория:Реки России": "namespace"},
}

# Prose each article keeps word for word (link labels in place of their links).
PROSE: dict[str, dict[str, list[str]]] = {
    "tr": {"Ankara": ["Ankara, Türkiye'nin başkenti ve en kalabalık ikinci şehridir.",
                      "Şehir, İç Anadolu Bölgesi'nin ortasında yer alır.", "Tarih",
                      "Antik çağda şehrin adı Ankyra idi. 1923'te Cumhuriyet'in başkenti oldu ve hızla büyüdü.",
                      "Şehrin simgesi ile bilinir."],
           "Kızılay (Ankara)": ["Kızılay, Ankara'nın merkezinde bir semttir ve şehrin ulaşım düğümüdür.",
                                "ayrıca bkz. Ankara'nın semtleri.", "Vikisözlük ve semt maddesine bakınız.",
                                "Ankara Büyükşehir Belediyesi & ilçe belediyesi"],
           "Van Gölü": ["Van Gölü Türkiye'nin en büyük gölüdür. Suyu sodalıdır. Gölde inci kefali yaşar."]},
    "zh": {"长城": ["长城是中国古代的军事防御工程，修筑的历史可上溯到西周时期。", "历史",
                    "秦始皇统一中国后，将各国的长城连接起来，史称“万里长城”。明代的长城大部分保存至今&仍可参观。"],
           "黄河": ["黄河是中国第二长河，全长约5464公里。", "详见黄河分类与河的释义。", "黄河水利委员会"],
           "北京": ["北京，简称“京”，是中华人民共和国的首都。", "北京有三千多年建城史。"]},
    "ja": {"エジプト": ["エジプト・アラブ共和国、通称エジプトは、中東およびアフリカに位置する共和制国家である。首都はカイロ。",
                        "古代エジプトではナイル川の流域に文明が栄えた。1952年の革命で共和制となった&現在に至る。",
                        "関連する分野として社会言語学がある。"],
           "ノートルダム大聖堂": ["ノートルダム大聖堂は、フランスのパリにあるゴシック建築の大聖堂である。",
                                  "詳しくは大聖堂の語義を参照。", "公式サイト"],
           "Re:ゼロから始める異世界生活": ["『Re:ゼロから始める異世界生活』は、長月達平によるライトノベルである。略称は「リゼロ」。"]},
    "vi": {"Hà Nội": ["Hà Nội là thủ đô của nước Cộng hòa xã hội chủ nghĩa Việt Nam. Thành phố nằm bên bờ sông Hồng.",
                      "Năm 1010, Lý Thái Tổ dời đô về Thăng Long. Thành phố có lịch sử hơn một nghìn năm tuổi."],
           "Internet": ["Internet là một hệ thống thông tin toàn cầu có thể được truy nhập công cộng.",
                        "Xem thêm các bài về Internet và mạng.", "Hiệp hội Internet"],
           "Phở": ["Phở là một món ăn truyền thống của Việt Nam. Thành phần chính là bánh phở và nước dùng."]},
    "ru": {"Москва": ["Москва́ — столица России, крупнейший по численности населения город страны.",
                      "Впервые Москва упоминается в летописи в 1147 году. В 1918 году она снова стала столицей страны."],
           "Волга": ["Волга — река в европейской части России, самая длинная в Европе.",
                     "См. также реки России и река.", "Сайт о Волге"],
           "Байкал": ["Байкал — озеро тектонического происхождения. Это самое глубокое озеро на планете."]},
}

# Strings no cleaned article of that wiki may hold.
_COMMON = ["thumb", "upright", "alt=", "px", ".jpg", ".JPG", ".png", ".svg", ".ogg", "File:", "Image:", "Category:",
           "en:", "ja:", "zh:", "de:", "fr:", "wikt:", "http", "{{", "}}", "[[", "]]", "'''", "''", "<", ">", "&nbsp;",
           "&amp;", "__", "DEFAULTSORT", "|", "cite", "Cite"]
LEAKS: dict[str, list[str]] = {
    "tr": _COMMON + ["küçükresim", "küçük|", "sağ", "sol|", "Dosya", "Resim", "Kategori:", "Medya", "galeri açıklaması",
                     "Türkiye'nin illeri", "Başkentler", "Türkiye gölleri", "İÇİNDEKİLER", "Yıl", "74 553",
                     "Kaynakça", "kaynak aranıyor", "Diğer anlamlar", "Web kaynağı", "zh-min-nan"],
    "zh": _COMMON + ["文件", "檔案", "图像", "分类:", "分類:", "中国长城", "世界遗产", "中国河流", "中国城市", "图集说明",
                     "金山岭长城", "朝代", "8,851.8", "需要来源", "参考文献", "图集", "其他用法"],
    "ja": _COMMON + ["ファイル", "画像", "サムネイル", "代替文", "右|", "左|", "カテゴリ", "ギャラリー説明", "アフリカの国",
                     "パリの教会", "ギザの三大ピラミッド", "パノラマ", "ロゴ", "出典不明", "目次", "脚注", "ギャラリー",
                     "出来事", "その他"],
    "vi": _COMMON + ["Tập tin", "Hình:", "nhỏ|", "phải|", "trái|", "Thể loại", "mô tả thư viện", "Thủ đô châu Á",
                     "Tổ chức quốc tế", "Ẩm thực", "Văn Miếu", "Bản đồ Internet", "Dân số", "cần nguồn", "Tham khảo",
                     "Hình ảnh", "các nghĩa khác"],
    "ru": _COMMON + ["Файл", "Изображение", "мини", "справа", "слева", "Категория", "подпись галереи",
                     "Города-миллионеры", "Столицы", "Реки России", "Озёра России", "Москва-Сити", "Волга у Ярославля",
                     "Население", "нужен источник", "Примечания", "Галерея", "Другие значения"],
}
LANGUAGES = tuple(PAGES)


def page_xml(page_id: int, page: Page) -> str:
    title, ns, redirect, text = page
    marked = f'\n    <redirect title="{escape(redirect, {chr(34): "&quot;"})}" />' if redirect else ""
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>{marked}\n"
            f"    <revision>\n      <id>{page_id * 10}</id>\n      <timestamp>2024-05-01T12:00:00Z</timestamp>\n"
            f"      <contributor>\n        <username>Örnek</username>\n        <id>42</id>\n      </contributor>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>\n'
            f"    </revision>\n  </page>\n")


def header_xml(lang: str) -> str:
    sitename, dbname, base, generator, namespaces = SITEINFO[lang]
    lines = [HEAD.format(lang=lang), "  <siteinfo>\n", f"    <sitename>{sitename}</sitename>\n",
             f"    <dbname>{dbname}</dbname>\n", f"    <base>{escape(base)}</base>\n",
             f"    <generator>{generator}</generator>\n", "    <case>first-letter</case>\n", "    <namespaces>\n"]
    for key, case, name in namespaces:
        lines.append(f'      <namespace key="{key}" case="{case}">{escape(name)}</namespace>\n' if name
                     else f'      <namespace key="{key}" case="{case}" />\n')
    lines += ["    </namespaces>\n", "  </siteinfo>\n"]
    return "".join(lines)


def write_dump(lang: str, directory: Path, pages: list[Page] | None = None, header: str | None = None) -> Path:
    """`{dbname}-pages-articles.xml.bz2` in `directory`: the header and the pages of one wiki."""
    pages = PAGES[lang] if pages is None else pages
    body = "".join(page_xml(i + 1, p) for i, p in enumerate(pages))
    path = directory / f"{SITEINFO[lang][1]}-pages-articles.xml.bz2"
    path.write_bytes(bz2.compress(((header or header_xml(lang)) + body + "</mediawiki>\n").encode("utf-8")))
    return path


def write_multistream(lang: str, directory: Path, per_stream: int = 2, pages: list[Page] | None = None,
                      header: str | None = None) -> Path:
    """The same wiki as a multistream dump (a header stream, page streams, a footer) with its index."""
    pages = PAGES[lang] if pages is None else pages
    streams = [bz2.compress((header or header_xml(lang)).encode("utf-8"))]
    index, offset = [], len(streams[0])
    for start in range(0, len(pages), per_stream):
        group = pages[start : start + per_stream]
        data = bz2.compress("".join(page_xml(start + i + 1, p) for i, p in enumerate(group)).encode("utf-8"))
        index += [f"{offset}:{start + i + 1}:{p[0]}" for i, p in enumerate(group)]
        streams.append(data)
        offset += len(data)
    streams.append(bz2.compress(b"</mediawiki>\n"))
    name = f"{SITEINFO[lang][1]}-20240501-pages-articles-multistream"
    path = directory / f"{name}.xml.bz2"
    path.write_bytes(b"".join(streams))
    (directory / f"{name}-index.txt.bz2").write_bytes(bz2.compress(("\n".join(index) + "\n").encode("utf-8")))
    return path


def corpus_pages(lang: str, copies: int) -> list[Page]:
    """A bigger dump of the same wiki to train on: every article `copies` times, each copy with a
    title and a first line of its own (so none is dropped as a duplicate), then the other pages once."""
    articles = [p for p in PAGES[lang] if KINDS[lang][p[0]] == "article"]
    others = [p for p in PAGES[lang] if KINDS[lang][p[0]] != "article"]
    copied = [(f"{title} {n}", ns, redirect, f"{n}.\n\n{text}")
              for n in range(copies) for title, ns, redirect, text in articles]
    return copied + others
