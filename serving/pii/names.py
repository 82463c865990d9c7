"""Personal names (氏名) from SudachiPy's dictionary: opt-in, because it costs milliseconds.

SudachiPy's core dictionary tags surnames and given names (名詞-固有名詞-人名-姓/名)
for a few hundred thousand entries. A run of such tokens is a name: a surname
followed by a given name scores 0.85, a single name followed by an honorific
(さん, 様, 氏, 殿, 君, 先生) or after a name-field label (氏名, 名前, 申請者)
0.85, a lone surname 0.6, a lone given name 0.4 (below the default threshold:
given names collide with ordinary words).

Why SudachiPy and not GiNZA: GiNZA (ja-ginza) is a spaCy pipeline whose
tokeniser *is* SudachiPy with the same dictionary, plus a parser and an NER
model on top; its person entities come from the same dictionary evidence
with much more cost on top (docs/pii.md has both measured). Even the
morphological analysis alone takes most of the 2 ms budget for a
2,000-character prompt (and its dictionary is ~200 MB installed), so names
are detected only where a policy sets `names: true`.
"""

from __future__ import annotations

_HONORIFICS = frozenset({"さん", "様", "さま", "氏", "殿", "君", "くん", "ちゃん", "先生", "議員", "委員"})
_LABELS = ("氏名", "名前", "申請者", "届出人", "代表者", "担当者", "患者", "被保険者", "世帯主")


class NameRecognizer:
    name = "JpNameSudachiRecognizer"

    def __init__(self) -> None:
        from sudachipy import Dictionary, SplitMode

        dictionary = Dictionary(dict="core")
        make = getattr(dictionary, "tokenizer", None) or dictionary.create
        self._tokenizer = make(mode=SplitMode.C)

    def analyze(self, text: str) -> list[tuple[int, int, float]]:
        out: list[tuple[int, int, float]] = []
        tokens = list(self._tokenizer.tokenize(text))
        i = 0
        while i < len(tokens):
            pos = tokens[i].part_of_speech()
            if pos[2] != "人名":
                i += 1
                continue
            kinds = [pos[3]]
            j = i + 1
            while j < len(tokens):
                nxt = tokens[j].part_of_speech()
                if nxt[2] == "人名":
                    kinds.append(nxt[3])
                    j += 1
                elif nxt[0] == "空白" and j + 1 < len(tokens) and tokens[j + 1].part_of_speech()[2] == "人名":
                    j += 1
                else:
                    break
            start, end = tokens[i].begin(), tokens[j - 1].end()
            after = tokens[j].surface() if j < len(tokens) else ""
            before = text[max(0, start - 6):start]
            if "姓" in kinds and "名" in kinds:
                score = 0.85
            elif after in _HONORIFICS or any(label in before for label in _LABELS):
                score = 0.85
            elif "姓" in kinds:
                score = 0.6
            else:
                score = 0.4
            out.append((start, end, score))
            i = j
        return out
