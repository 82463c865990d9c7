"""Write the labelled synthetic Japanese test set of the personal-information guard.

Administrative texts (notices, application forms, minutes, e-mails) with
identifiers in the forms staff type them (full-width digits, ー/－ as hyphens,
parentheses, kanji numerals, 和暦), invalid check digits, and near misses
(order and document numbers, amounts, dates, product and tracking codes that
look like identifiers). The labels come from where this generator put each
value, not from the recognisers. Deterministic (seeded):

    .venv/bin/python tools/pii_testset.py            # writes tests/data/pii/testset.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from serving.pii.checkdigits import corporate_number_check_digit, luhn_valid, my_number_check_digit

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pii" / "testset.jsonl"
FULL = str.maketrans("0123456789-", "０１２３４５６７８９－")
SURNAMES = ["山田", "佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "中村", "小林", "加藤", "吉田", "山本"]
GIVEN = ["太郎", "花子", "一郎", "美咲", "健太", "陽子", "大輔", "直樹", "由美", "翔太", "恵子", "誠"]
PLACES = [("東京都", "千代田区", "霞が関"), ("大阪府", "大阪市北区", "梅田"), ("北海道", "札幌市中央区", "北一条西"),
          ("神奈川県", "横浜市中区", "日本大通"), ("福岡県", "福岡市博多区", "博多駅前"), ("愛知県", "名古屋市中区", "三の丸"),
          ("京都府", "京都市上京区", "下立売通"), ("沖縄県", "那覇市", "泉崎"), ("長野県", "松本市", "丸の内"),
          ("鹿児島県", "鹿児島市", "鴨池新町")]
KANJI = "〇一二三四五六七八九"


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _kanji_number(n: int) -> str:
    if n < 10:
        return KANJI[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else KANJI[tens]) + "十" + (KANJI[ones] if ones else "")


class Doc:
    def __init__(self, kind: str):
        self.kind, self.parts, self.labels, self.length = kind, [], [], 0

    def text(self, s: str) -> Doc:
        self.parts.append(s)
        self.length += len(s)
        return self

    def pii(self, entity: str | None, value: str, note: str = "") -> Doc:
        if entity is not None:
            self.labels.append({"type": entity, "start": self.length, "end": self.length + len(value)})
        else:
            self.labels.append({"type": None, "start": self.length, "end": self.length + len(value),
                                "near_miss": note})
        return self.text(value)

    def row(self) -> dict:
        return {"kind": self.kind, "text": "".join(self.parts),
                "labels": [x for x in self.labels if x["type"]],
                "near_misses": [x for x in self.labels if not x["type"]]}


# -- values -------------------------------------------------------------------------------------
def my_number(rng: random.Random, valid: bool = True) -> str:
    base = _digits(rng, 11)
    check = my_number_check_digit(base)
    if not valid:
        check = (check + rng.randrange(1, 10)) % 10
        if check == my_number_check_digit(base):
            check = (check + 1) % 10
    n = base + str(check)
    style = rng.randrange(4)
    if style == 1:
        n = f"{n[:4]}-{n[4:8]}-{n[8:]}"
    elif style == 2:
        n = f"{n[:4]} {n[4:8]} {n[8:]}"
    elif style == 3:
        n = f"{n[:4]}-{n[4:8]}-{n[8:]}".translate(FULL)
    return n


def corporate(rng: random.Random, valid: bool = True) -> str:
    base = _digits(rng, 12)
    check = corporate_number_check_digit(base)
    if not valid:
        check = (check + rng.randrange(1, 9)) % 10
    return str(check) + base


def phone(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        n = f"03-{_digits(rng, 4)}-{_digits(rng, 4)}"
    elif kind == 1:
        n = f"0{rng.choice('4679')}{rng.randrange(1, 10)}-{_digits(rng, 3)}-{_digits(rng, 4)}"
    elif kind == 2:
        n = f"0{rng.choice('123')}{_digits(rng, 2)}-{_digits(rng, 2)}-{_digits(rng, 4)}"
    elif kind == 3:
        n = f"0{rng.choice('789')}0-{_digits(rng, 4)}-{_digits(rng, 4)}"
    elif kind == 4:
        n = f"050-{_digits(rng, 4)}-{_digits(rng, 4)}"
    elif kind == 5:
        n = f"0120-{_digits(rng, 3)}-{_digits(rng, 3)}"
    elif kind == 6:
        n = f"(03){_digits(rng, 4)}-{_digits(rng, 4)}"
    elif kind == 7:
        n = f"06({_digits(rng, 4)}){_digits(rng, 4)}"
    elif kind == 8:
        n = f"0{rng.choice('789')}0{_digits(rng, 8)}"
    else:
        n = f"+81-90-{_digits(rng, 4)}-{_digits(rng, 4)}"
    style = rng.randrange(5)
    if style == 0 and not n.startswith("+"):
        n = n.translate(FULL)
    elif style == 1 and "-" in n and not n.startswith("+"):
        n = n.replace("-", "ー")
    return n


def postal(rng: random.Random) -> str:
    return f"{rng.randrange(100, 1000)}-{_digits(rng, 4)}"


def address(rng: random.Random) -> str:
    pref, city, town = rng.choice(PLACES)
    a, b, c = rng.randrange(1, 10), rng.randrange(1, 30), rng.randrange(1, 20)
    style = rng.randrange(3)
    if style == 0:
        block = f"{a}-{b}-{c}"
    elif style == 1:
        block = f"{_kanji_number(a)}丁目{b}番{c}号"
    else:
        block = f"{a}丁目{b}番地{c}"
    text = f"{pref}{city}{town}{block}"
    return text.translate(FULL) if rng.randrange(4) == 0 else text


def email(rng: random.Random) -> str:
    user = rng.choice(["taro.yamada", "h-sato", "suzuki_i", "kikaku.ka", "info", "m.tanaka01"])
    host = rng.choice(["city.example.lg.jp", "pref.example.lg.jp", "example.go.jp", "example.co.jp", "mail.example.ne.jp"])
    return f"{user}@{host}"


def card(rng: random.Random, valid: bool = True) -> str:
    prefix, length = rng.choice([("4", 16), ("5", 16), ("35", 16), ("37", 15)])
    while True:
        n = prefix + _digits(rng, length - len(prefix))
        if luhn_valid(n) == valid:
            break
    if length == 16 and rng.randrange(2):
        sep = rng.choice(["-", " "])
        n = sep.join(n[i:i + 4] for i in range(0, 16, 4))
    return n


def dob(rng: random.Random) -> str:
    year = rng.randrange(1940, 2010)
    m, d = rng.randrange(1, 13), rng.randrange(1, 29)
    style = rng.randrange(4)
    if style == 0:
        return f"{year}年{m}月{d}日"
    if style == 1:
        era, start = ("昭和", 1925) if year < 1989 else ("平成", 1988)
        return f"{era}{year - start}年{m}月{d}日"
    if style == 2:
        return f"{year}/{m:02d}/{d:02d}"
    era, start = ("S", 1925) if year < 1989 else ("H", 1988)
    return f"{era}{year - start}.{m}.{d}"


# -- documents ----------------------------------------------------------------------------------
def application(rng: random.Random) -> dict:
    d = Doc("application_form")
    name = rng.choice(SURNAMES) + rng.choice(["", " ", "　"]) + rng.choice(GIVEN)
    d.text("住民票の写し等交付申請書\n氏名：").pii("PERSON", name)
    d.text("\n生年月日：").pii("JP_DATE_OF_BIRTH", dob(rng))
    d.text("\n住所：〒").pii("JP_POSTAL_CODE", postal(rng)).text(" ").pii("JP_ADDRESS", address(rng))
    d.text("\n電話番号：").pii("JP_PHONE_NUMBER", phone(rng))
    d.text("\n個人番号：").pii("JP_MY_NUMBER", my_number(rng))
    d.text("\n受付番号：").pii(None, _digits(rng, 12), "receipt number, 12 digits")
    d.text("\n手数料：").pii(None, f"{rng.randrange(1, 9)},{_digits(rng, 3)}", "amount").text("円\n")
    return d.row()


def notice(rng: random.Random) -> dict:
    d = Doc("notice")
    d.text("令和6年度 補助金交付決定通知書\n交付先：").pii("PERSON", rng.choice(SURNAMES) + rng.choice(GIVEN)).text("様\n")
    d.text("法人番号 ").pii("JP_CORPORATE_NUMBER", corporate(rng))
    d.text("\n振込先：").text(rng.choice(["みずほ銀行", "三菱UFJ銀行", "ゆうちょ銀行", "横浜信用金庫"]))
    d.text(rng.choice(["渋谷支店", "本店営業部", "〇一八支店"])).text(" 普通 ").pii("JP_BANK_ACCOUNT", _digits(rng, 7))
    d.text("\n交付決定額：").pii(None, f"{rng.randrange(1, 999)},{_digits(rng, 3)},{_digits(rng, 3)}", "amount").text("円")
    d.text("\n文書番号：").pii(None, f"{_digits(rng, 4)}-{_digits(rng, 4)}-{_digits(rng, 4)}", "document number 4-4-4")
    d.text("\n問い合わせ先：").pii("JP_PHONE_NUMBER", phone(rng)).text("（担当：企画課）\n")
    d.text("開催日：令和").pii(None, f"{rng.randrange(1, 7)}年{rng.randrange(1, 13)}月{rng.randrange(1, 28)}日", "date").text("\n")
    return d.row()


def minutes(rng: random.Random) -> dict:
    d = Doc("minutes")
    d.text("第3回 住民サービス検討会 議事録\n日時：").pii(None, f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 28):02d}", "date")
    d.text(" 10:00〜12:00\n出席者：").pii("PERSON", rng.choice(SURNAMES) + rng.choice(GIVEN)).text("委員、")
    d.pii("PERSON", rng.choice(SURNAMES)).text("委員\n")
    d.text("議題1 窓口で受け付けた申請の件。申請者の個人番号").pii("JP_MY_NUMBER", my_number(rng))
    d.text("について記載誤りがあった（正しくは旧番号").pii(None, my_number(rng, valid=False), "invalid check digit").text("ではない）。\n")
    d.text("注文番号").pii(None, _digits(rng, 12), "order number 12 digits").text("の物品は納品済み。")
    d.text("商品コード").pii(None, "49" + _digits(rng, 11), "JAN-like 13 digits").text("。")
    d.text("追跡番号 ").pii(None, _digits(rng, 12), "tracking number").text("。\n")
    d.text("申請者の旅券番号 ").pii("JP_PASSPORT", rng.choice(["TK", "TR", "MZ", "TZ"]) + _digits(rng, 7))
    d.text("、運転免許証番号 第").pii("JP_DRIVER_LICENSE", _digits(rng, 12)).text("号を確認。\n")
    return d.row()


def mail(rng: random.Random) -> dict:
    d = Doc("email")
    surname = rng.choice(SURNAMES)
    d.text("件名：口座振替のお手続きについて\n").pii("PERSON", surname + rng.choice(GIVEN)).text(" 様\n")
    d.text("いつもお世話になっております。ご登録のメールアドレス（").pii("EMAIL_ADDRESS", email(rng)).text("）宛にお送りします。\n")
    d.text("お支払いに使うカード番号は").pii("CREDIT_CARD", card(rng)).text("で登録されています。\n")
    d.text("ご指定の口座番号：").pii("JP_BANK_ACCOUNT", _digits(rng, 7)).text("\n")
    d.text("誤って送られた番号").pii(None, card(rng, valid=False), "card number failing Luhn").text("は無効です。\n")
    d.text("ご連絡は").pii("JP_PHONE_NUMBER", phone(rng)).text("まで。\n")
    d.text("送付先：").pii("JP_POSTAL_CODE", postal(rng)).text(" ").pii("JP_ADDRESS", address(rng)).text("\n")
    d.text("請求書番号 INV-").pii(None, _digits(rng, 10), "invoice number 10 digits").text("\n")
    return d.row()


def near_misses(rng: random.Random) -> dict:
    """A document of nothing but identifier-like numbers that are not personal information."""
    d = Doc("near_misses")
    for _ in range(6):
        kind = rng.randrange(6)
        if kind == 0:
            d.text("注文番号：").pii(None, my_number(rng, valid=rng.randrange(2) == 0).replace("－", "-"), "order number (check digit random)")
        elif kind == 1:
            d.text("受付番号").pii(None, corporate(rng, valid=rng.randrange(2) == 0), "receipt number 13 digits")
        elif kind == 2:
            d.text("伝票番号 ").pii(None, _digits(rng, 16), "slip number 16 digits")
        elif kind == 3:
            d.text("個人番号（誤）").pii(None, my_number(rng, valid=False), "invalid check digit")
        elif kind == 4:
            d.text("予算額").pii(None, f"{rng.randrange(1, 99)},{_digits(rng, 3)},{_digits(rng, 3)}", "amount").text("円")
        else:
            d.text("管理番号").pii(None, "0" + _digits(rng, 9), "10 digits starting with 0")
        d.text("。\n")
    return d.row()


KATAKANA_NAMES = ["ヤマダ タロウ", "サトウ ハナコ", "スズキ イチロウ", "タナカ ミサキ"]


def hard(rng: random.Random) -> dict:
    """Forms the recognisers are known not to cover (kept so the measured recall says so)."""
    d = Doc("hard_cases")
    _, city, town = rng.choice(PLACES)
    d.text("転居先は").pii("JP_ADDRESS", f"{city}{town}{rng.randrange(1, 9)}-{rng.randrange(1, 30)}-{rng.randrange(1, 20)}")
    d.text("（都道府県名なし）。フリガナ：").pii("PERSON", rng.choice(KATAKANA_NAMES))
    d.text("。書類の右上に ").pii("JP_POSTAL_CODE", postal(rng)).text(" とある。")
    d.text("自宅 ").pii("JP_PHONE_NUMBER", "0" + str(rng.randrange(1, 10)) + _digits(rng, 8)).text(" に連絡。\n")
    return d.row()


def build(seed: int = 20261201, per_kind: int = 60) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for make in (application, notice, minutes, mail, near_misses, hard):
        rows += [make(rng) for _ in range(per_kind)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    rows = build()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} documents, {sum(len(r['labels']) for r in rows)} labelled values, "
          f"{sum(len(r['near_misses']) for r in rows)} near misses -> {args.output}")


if __name__ == "__main__":
    main()
