"""The Japanese recognisers: one regular expression each, plus check digits and context.

Each recogniser matches on normalised text (serving/pii/normalize.py) and
returns (start, end, score) for the identifier itself: where the pattern needs
a context word (口座番号 before a bank account number), the identifier is the
named group `pii` and the context is not part of the finding.

Why context and check digits carry the precision: a 12-digit order number
passes the Individual Number check digit about one time in eleven, so a
check-digit-valid number is reported at 0.85 unless a *negative* context word
(注文番号, 受付番号, 伝票番号, ...) names it as something else, and at 1.0 when
個人番号/マイナンバー precedes it. Bank accounts, passports and driver's
licences have no public check digit, so they are only reported after their
context word (in the issue's words: "in context").

Boundaries are digit-aware lookarounds, not `\\b`: in Japanese a number
follows a kanji directly (番号123456789018), and kanji are word characters, so
the `\\b` of English recognisers (Presidio's among them) never fires there.

The patterns use the `regex` module for its partial matching: the streaming
scanner asks which suffix of an unfinished answer could still become an
identifier and holds back only that (serving/pii/stream.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import regex

from serving.pii.checkdigits import is_corporate_number, is_my_number, luhn_valid

#: score given to check-digit-valid numbers without any context word
NO_CONTEXT_SCORE = 0.85

_D = "[0-9]"
_KNUM = "[一二三四五六七八九十〇百千]"
_NUM = "[0-9一二三四五六七八九十〇百千]+"
PREFECTURES = (
    "北海道|東京都|大阪府|京都府|(?:青森|岩手|宮城|秋田|山形|福島|茨城|栃木|群馬|埼玉|千葉|神奈川|新潟|"
    "富山|石川|福井|山梨|長野|岐阜|静岡|愛知|三重|滋賀|兵庫|奈良|和歌山|鳥取|島根|岡山|広島|山口|"
    "徳島|香川|愛媛|高知|福岡|佐賀|長崎|熊本|大分|宮崎|鹿児島|沖縄)県"
)

#: words that name a number as something other than a personal identifier
_NEGATIVE = regex.compile(
    r"(?:注文|受注|発注|受付|伝票|問い?合わ?せ|管理|会員|顧客|お客様|契約|証券|整理|申込|予約|商品|"
    r"製造|品番|型番|シリアル|請求書|案件|文書|番組|追跡|送り状|配送|取引|口座|免許|旅券|"
    r"order|invoice|tracking|serial)[^。\n]{0,8}$",
    regex.IGNORECASE,
)
_MY_NUMBER_CONTEXT = regex.compile(r"(?:個人番号|マイナンバー|my ?number)[^。\n]{0,20}$",
                                   regex.IGNORECASE)
_CORPORATE_CONTEXT = regex.compile(r"(?:法人番号|登録番号|適格請求書|インボイス)[^。\n]{0,20}$")
_PHONE_CONTEXT = regex.compile(r"(?:電話|TEL|FAX|携帯|連絡先|自宅|勤務先|☎|℡|内線|代表)[^。\n]{0,12}$",
                               regex.IGNORECASE)
_POSTAL_CONTEXT = regex.compile(r"(?:〒|郵便|住所|所在地|送付先)[^。\n]{0,10}$")
#: the first characters of the prefecture names: an address cannot start without one
_PREFECTURE_START = regex.compile(
    "[" + "".join(sorted({name[0] for name in PREFECTURES.replace("(?:", "").replace(")県", "").split("|")})) + "]")
_PREFECTURE_AFTER = regex.compile(r"\s{0,2}(?:" + PREFECTURES + ")")


_CONTINUABLE = regex.compile(r"[A-Za-z0-9.\-_%+@() ]*")


def _before(text: str, start: int, window: int = 24) -> str:
    return text[max(0, start - window):start]


@dataclass(frozen=True)
class Recognizer:
    """One pattern-based recogniser.

    `validate(text, start, end)` returns the finding's score, or None to drop the
    match (wrong check digit, a negative context word, a digit count that no
    numbering plan uses).
    """

    name: str
    entity: str
    pattern: regex.Pattern
    score: float
    validate: Callable[[str, int, int], float | None] | None = None
    #: a character every match (and every partial match that could reach the identifier) needs:
    #: texts without one are skipped, which is most of a Japanese answer's chunks
    trigger: regex.Pattern | None = None

    def relevant(self, text: str) -> bool:
        return self.trigger is None or self.trigger.search(text) is not None

    def analyze(self, text: str) -> list[tuple[int, int, float]]:
        out = []
        group = "pii" if "pii" in self.pattern.groupindex else 0
        for match in self.pattern.finditer(text):
            start, end = match.span(group)
            score = self.score if self.validate is None else self.validate(text, start, end)
            if score is not None:
                out.append((start, end, score))
        return out

    def partial_start(self, text: str, floor: int) -> int | None:
        """The earliest start (>= floor) of a match that the next characters could still change.

        A partial match at the end of `text`, or a complete one that ends there or is followed
        only by identifier characters (more digits could make it another number), means the
        text from its start must wait.
        """
        earliest = None
        for match in self.pattern.finditer(text, partial=True):
            # a complete match followed only by characters an identifier is made of may still
            # grow (example.go -> example.go.jp): it waits too
            if match.partial or _CONTINUABLE.fullmatch(text, match.end()):
                start = max(floor, match.start())
                earliest = start if earliest is None else min(earliest, start)
                break  # finditer goes left to right: the first such match is the earliest
        return earliest


def _my_number(text: str, start: int, end: int) -> float | None:
    if not is_my_number(text[start:end]):
        return None
    before = _before(text, start)
    if _MY_NUMBER_CONTEXT.search(before):
        return 1.0
    if _NEGATIVE.search(before):
        return None
    return NO_CONTEXT_SCORE


def _corporate_number(text: str, start: int, end: int) -> float | None:
    value = text[start:end]
    if len(value) != (14 if value[0] in "Tt" else 13) or not is_corporate_number(value):
        return None
    before = _before(text, start)
    if text[start] in "Tt" or _CORPORATE_CONTEXT.search(before):
        return 1.0
    if _NEGATIVE.search(before):
        return None
    return NO_CONTEXT_SCORE


#: national digit counts of the numbering plan (総務省 電気通信番号計画)
def _phone(text: str, start: int, end: int) -> float | None:
    value = text[start:end]
    digits = "".join(c for c in value if c.isdigit())
    if value.startswith("+81"):
        digits = "0" + digits[2:].lstrip("0")
    if digits.startswith(("0120", "0570", "0990")):
        wanted = 10
    elif digits.startswith(("0800", "050", "070", "080", "090", "020")):
        wanted = 11
    else:
        wanted = 10
    if len(digits) != wanted:
        return None
    separated = not value.isdigit()
    if separated or digits.startswith(("050", "070", "080", "090", "0120", "0800")):
        return 0.95
    return 0.9 if _PHONE_CONTEXT.search(_before(text, start)) else None


_MARK = regex.compile(r"(?:〒|郵便番号[:：]?)\s?$")


def _postal(text: str, start: int, end: int) -> float | None:
    marked = _MARK.search(_before(text, start, 8)) is not None
    if "-" not in text[start:end]:  # seven bare digits: only right after 〒 or 郵便番号
        return 1.0 if marked else None
    if marked or _POSTAL_CONTEXT.search(_before(text, start, 14)):
        return 1.0
    if _PREFECTURE_AFTER.match(text, end):
        return 0.9
    return 0.4  # a bare 123-4567 is often a part or document number: reported, not acted on


def _card(text: str, start: int, end: int) -> float | None:
    if not luhn_valid(text[start:end]):
        return None
    if _NEGATIVE.search(_before(text, start)) and "カード" not in _before(text, start):
        return None
    return 1.0


_SEP = r"[ -]?"
_DIGIT = regex.compile(r"[0-9]")
_END_NUM = r"(?![0-9]|-[0-9])"
_DATE = (
    r"(?:(?:19|20)[0-9]{2}(?:年\s?[0-9]{1,2}月\s?[0-9]{1,2}日|(?P<ds>[/.-])[0-9]{1,2}(?P=ds)[0-9]{1,2}(?![0-9]))"
    r"|(?:明治|大正|昭和|平成|令和)\s?(?:元|[0-9]{1,2}|" + _KNUM + r"{1,3})年\s?(?:[0-9]{1,2}|"
    + _KNUM + r"{1,3})月\s?(?:[0-9]{1,2}|" + _KNUM + r"{1,3})日"
    r"|(?<![A-Za-z])[MTSHR]\.?[0-9]{1,2}(?P<ws>[/.-])[0-9]{1,2}(?P=ws)[0-9]{1,2}(?![0-9]))"
)


def _compile(pattern: str, flags: int = 0) -> regex.Pattern:
    return regex.compile(pattern, flags)


RECOGNIZERS: tuple[Recognizer, ...] = (
    Recognizer(
        "JpMyNumberRecognizer", "JP_MY_NUMBER",
        _compile(r"(?<![0-9])(?P<pii>[0-9]{4}(?P<sep>[ -]?)[0-9]{4}(?P=sep)[0-9]{4})" + _END_NUM),
        1.0, _my_number, _DIGIT,
    ),
    Recognizer(
        "JpCorporateNumberRecognizer", "JP_CORPORATE_NUMBER",
        _compile(r"(?<![0-9A-Za-z])(?P<pii>[0-9Tt][0-9]{12,13})" + _END_NUM),
        1.0, _corporate_number, _DIGIT,
    ),
    Recognizer(
        "JpPhoneRecognizer", "JP_PHONE_NUMBER",
        _compile(
            r"(?<![0-9+-])(?P<pii>"
            r"(?:\+81[ -]?|0)[0-9]{1,4}(?:[ -][0-9]{1,4}[ -]|\([0-9]{1,4}\)|-[0-9]{1,4}\))[0-9]{3,4}"
            r"|\(0[0-9]{1,4}\)\s?[0-9]{1,4}[ -][0-9]{3,4}"
            r"|0[0-9]{9,10})" + _END_NUM
        ),
        0.95, _phone, _DIGIT,
    ),
    Recognizer(
        "JpPostalCodeRecognizer", "JP_POSTAL_CODE",
        _compile(r"(?<![0-9-])(?P<pii>[0-9]{3}-?[0-9]{4})" + _END_NUM),
        1.0, _postal, _DIGIT,
    ),
    Recognizer(
        "JpAddressRecognizer", "JP_ADDRESS",
        _compile(
            r"(?P<pii>(?:" + PREFECTURES + r")[^\s、。,()「」『』0-9]{1,12}?[市区町村郡]"
            r"[^\s、。,()「」『』]{0,20}" + _NUM + r"(?:(?:丁目|番地|番|号|-|の)" + _NUM
            + r")*(?:丁目|番地|番|号)?)"
        ),
        0.9, None, _PREFECTURE_START,
    ),
    Recognizer(
        "EmailRecognizerJa", "EMAIL_ADDRESS",
        _compile(r"(?<![A-Za-z0-9._%+-])(?P<pii>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                 r"\.[A-Za-z]{2,})(?![A-Za-z0-9-])"),
        1.0, None, regex.compile(r"[A-Za-z0-9@]"),
    ),
    Recognizer(
        "CreditCardRecognizerJa", "CREDIT_CARD",
        _compile(r"(?<![0-9])(?P<pii>[3-6][0-9]{3}(?:" + _SEP + r"[0-9]{4}){2}" + _SEP
                 + r"[0-9]{2,7})" + _END_NUM),
        1.0, _card, _DIGIT,
    ),
    Recognizer(  # 15-digit cards grouped 4-6-5 (American Express, some JCB)
        "CreditCardRecognizerJa", "CREDIT_CARD",
        _compile(r"(?<![0-9])(?P<pii>3[0-9]{3}" + _SEP + r"[0-9]{6}" + _SEP + r"[0-9]{4,5})" + _END_NUM),
        1.0, _card, _DIGIT,
    ),
    Recognizer(
        "JpBankAccountRecognizer", "JP_BANK_ACCOUNT",
        _compile(r"(?:口座|普通|当座|貯蓄|\(普\)|\(当\)|銀行|支店|信用金庫|信金)[^0-9。\n]{0,12}"
                 r"(?P<pii>[0-9]{7})(?![0-9])"
                 r"|(?:記号|ゆうちょ)[^0-9。\n]{0,6}(?P<pii>[0-9]{5}[^0-9。\n]{0,6}[0-9]{6,8})(?![0-9])"),
        0.9, None, _DIGIT,
    ),
    Recognizer(
        "JpPassportRecognizer", "JP_PASSPORT",
        _compile(r"(?:旅券|パスポート|passport)[^。\n]{0,15}?(?<![A-Za-z])(?P<pii>[A-Z]{2}[0-9]{7})"
                 r"(?![0-9])", regex.IGNORECASE),
        0.95, None, _DIGIT,
    ),
    Recognizer(
        "JpDriverLicenseRecognizer", "JP_DRIVER_LICENSE",
        _compile(r"(?:運転免許|免許証)[^。\n]{0,15}?(?<![0-9])(?P<pii>[0-9]{12}|[0-9]{4}[ -][0-9]{4}"
                 r"[ -][0-9]{4})(?![0-9])"),
        0.95, None, _DIGIT,
    ),
    Recognizer(
        "JpDateOfBirthRecognizer", "JP_DATE_OF_BIRTH",
        _compile(r"(?:生年月日|誕生日|生年|出生日)[^0-9。\n]{0,8}?(?P<pii>" + _DATE + r")"
                 r"|(?P<pii>" + _DATE + r")\s?(?:生まれ|生(?![産活成徒命涯き]))"),
        0.95, None, regex.compile(r"[0-9明大昭平令]"),
    ),
)
