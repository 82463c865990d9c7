"""Normalisation for matching, with every position mapped back to the original text.

Government staff paste text typed with full-width digits (０９０－１２３４－５６７８),
katakana prolonged-sound marks or dashes as hyphens (090ー1234ー5678), ideographic
spaces and compatibility characters (㍻ for 平成). The recognisers match on the
normalised text; findings are reported and masked in the original.

What is applied, character by character:

* NFKC's compatibility mapping of each character (full-width ASCII, half-width
  katakana, ㍻ -> 平成, ① -> 1, U+3000 -> space). Composition across characters
  (か + U+3099 -> が) is not applied: no identifier needs it, and per-character
  mapping keeps the offset table exact.
* every dash variant (‐ ‑ ‒ – — ― − ﹣ －) -> "-"; the prolonged-sound mark ー
  (and half-width ｰ) -> "-" only between digits, so words like メール keep it.

Cost: nothing is copied when NFKC's own quick check (`unicodedata.is_normalized`,
in C) finds the text normalised, which is most Japanese prose; otherwise one
`str.translate` when every character maps to one character, and the offsets
are still the identity. Only text with an expanding character (㍻, ㈱, ⑩) takes the per-character
walk that records offsets.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"
_LONG_MARKS = "\u30fc"  # ー (half-width ｰ NFKC-maps to it)
_LONG_BETWEEN_DIGITS = re.compile(r"(?<=[0-9])[\u30fc](?=[0-9])")


def _build_table() -> dict[int, str]:
    table: dict[int, str] = {}
    ranges = [(0x80, 0xD800), (0xE000, 0x10000), (0x1D400, 0x1D800), (0x1F100, 0x1F200)]
    for lo, hi in ranges:
        for cp in range(lo, hi):
            ch = chr(cp)
            mapped = unicodedata.normalize("NFKC", ch)
            if mapped != ch:
                table[cp] = mapped
    for ch in _DASHES:
        table[ord(ch)] = "-"
    return table


_TABLE = _build_table()
#: any character the table changes: most Japanese prose has none, and then nothing is copied
#: dash variants that NFKC leaves alone (U+2010, U+2012-2015, U+2212): mapped here
_STABLE_DASHES = tuple(ch for ch in _DASHES if unicodedata.normalize("NFKC", ch) == ch)


@dataclass(frozen=True)
class Normalized:
    """Normalised text and, when lengths differ, the original index of each character."""

    text: str
    origin: tuple[int, ...] | None  # origin[i]: index in the original of normalised char i
    original_length: int

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original text's [start, end) for the normalised text's [start, end)."""
        if self.origin is None:
            return start, end
        if start >= len(self.origin):
            return self.original_length, self.original_length
        first = self.origin[start]
        last = self.origin[end - 1] + 1 if end > start else first
        return first, last


def normalize(text: str) -> Normalized:
    """NFKC per character, dash variants to "-", ー between digits to "-"; see the module doc."""
    if text.isascii():
        return Normalized(text, None, len(text))
    if unicodedata.is_normalized("NFKC", text) and not any(d in text for d in _STABLE_DASHES):
        mapped = text  # NFKC's own quick check, in C: most Japanese prose needs nothing
    else:
        mapped = text.translate(_TABLE)
    origin: tuple[int, ...] | None = None
    if len(mapped) != len(text):  # an expanding character: record where each output char came from
        pieces: list[str] = []
        index: list[int] = []
        for i, ch in enumerate(text):
            piece = _TABLE.get(ord(ch), ch)
            pieces.append(piece)
            index.extend([i] * len(piece))
        mapped = "".join(pieces)
        origin = tuple(index)
    if _LONG_MARKS in mapped:
        mapped = _LONG_BETWEEN_DIGITS.sub("-", mapped)
    return Normalized(mapped, origin, len(text))
