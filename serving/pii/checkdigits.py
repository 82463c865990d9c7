"""Check digits of Japanese identifiers and payment cards.

Every formula here is the issuing authority's own:

* Individual Number (個人番号, マイナンバー): 行政手続における特定の個人を識別するための
  番号の利用等に関する法律施行令 / 総務省令第八十五号 第五条. With the eleven base digits
  P11..P1 (P1 the rightmost), Q = 11 - (sum(Pn * Qn) mod 11) where Qn = n + 1 for
  n <= 6 and n - 5 for n >= 7; a remainder of 0 or 1 gives check digit 0.
* Corporate Number (法人番号): 法人番号の指定等に関する省令 第二条. The check digit is
  the *first* of 13 digits: 9 - (sum(Pn * Qn) mod 9) over the twelve base digits,
  P1 the rightmost, Qn = 1 for odd n and 2 for even n.
* Payment cards: the Luhn algorithm (ISO/IEC 7812-1).
"""

from __future__ import annotations


def _digits(text: str) -> list[int]:
    return [ord(c) - 48 for c in text if "0" <= c <= "9"]


def my_number_check_digit(base11: str) -> int:
    """The check digit of an Individual Number's eleven base digits."""
    digits = _digits(base11)
    if len(digits) != 11:
        raise ValueError("an Individual Number has 11 base digits")
    total = 0
    for n, p in enumerate(reversed(digits), start=1):
        total += p * (n + 1 if n <= 6 else n - 5)
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


def is_my_number(text: str) -> bool:
    """Twelve digits (separators ignored) whose last digit is the official check digit."""
    digits = _digits(text)
    return len(digits) == 12 and my_number_check_digit("".join(map(str, digits[:11]))) == digits[11]


def corporate_number_check_digit(base12: str) -> int:
    """The (leading) check digit of a Corporate Number's twelve base digits."""
    digits = _digits(base12)
    if len(digits) != 12:
        raise ValueError("a Corporate Number has 12 base digits")
    total = sum(p * (1 if n % 2 else 2) for n, p in enumerate(reversed(digits), start=1))
    return 9 - total % 9


def is_corporate_number(text: str) -> bool:
    """Thirteen digits whose first digit is the official check digit."""
    digits = _digits(text)
    return len(digits) == 13 and corporate_number_check_digit(
        "".join(map(str, digits[1:]))) == digits[0]


def luhn_valid(text: str) -> bool:
    """The Luhn check over every digit of `text` (13 to 19 digits for a card)."""
    digits = _digits(text)
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0
