"""Running the recognisers over a text: normalise, match, resolve overlaps, map back.

The router calls `Detector.findings` directly rather than through Presidio's
AnalyzerEngine: the engine's per-call bookkeeping and, above all, importing
presidio_analyzer (which imports spaCy, transformers and torch: seconds and
hundreds of MB per router replica) do not fit the request path's budget.
serving/pii/presidio_support.py wraps the same recognisers as Presidio
recognisers for the AnalyzerEngine and for presidio-anonymizer; docs/pii.md
has the measurements behind this choice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from serving.config.pii_entities import ENTITY_TYPES
from serving.pii.normalize import Normalized, normalize
from serving.pii.recognizers import RECOGNIZERS, Recognizer

DEFAULT_MIN_SCORE = 0.5


@dataclass(frozen=True, order=True)
class Finding:
    """One identifier in the original text: [start, end), never its value."""

    start: int
    end: int
    entity: str
    score: float
    recognizer: str

    def as_dict(self) -> dict:
        return {"type": self.entity, "start": self.start, "end": self.end,
                "score": round(self.score, 2), "recognizer": self.recognizer}


def resolve_overlaps(found: Iterable[Finding]) -> list[Finding]:
    """Keep the strongest of overlapping findings (higher score, then longer), in text order."""
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (-f.score, -(f.end - f.start), f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept)


class Detector:
    """The recognisers for a set of types; `names=True` adds the SudachiPy name recogniser."""

    def __init__(self, entities: Iterable[str] | None = None, *, names: bool = False,
                 min_score: float = DEFAULT_MIN_SCORE):
        wanted = set(entities) if entities is not None else set(ENTITY_TYPES)
        unknown = wanted - set(ENTITY_TYPES)
        if unknown:
            raise ValueError(f"unknown personal-information type(s): {', '.join(sorted(unknown))}")
        self.recognizers: tuple[Recognizer, ...] = tuple(r for r in RECOGNIZERS if r.entity in wanted)
        self.names = None
        if names and "PERSON" in wanted:
            from serving.pii.names import NameRecognizer

            self.names = NameRecognizer()
        self.min_score = min_score

    def findings(self, text: str, *, min_score: float | None = None) -> list[Finding]:
        """Every identifier in `text` scoring at least `min_score`, positions in the original."""
        floor = self.min_score if min_score is None else min_score
        return self._findings(normalize(text), floor)

    def _findings(self, norm: Normalized, floor: float,
                  recognizers: tuple[Recognizer, ...] | None = None) -> list[Finding]:
        found = []
        for rec in self.recognizers if recognizers is None else recognizers:
            if recognizers is None and not rec.relevant(norm.text):
                continue
            for start, end, score in rec.analyze(norm.text):
                if score >= floor:
                    s, e = norm.span(start, end)
                    found.append(Finding(s, e, rec.entity, score, rec.name))
        if self.names is not None and recognizers is None:  # names: prompts only, not streams
            for start, end, score in self.names.analyze(norm.text):
                if score >= floor:
                    s, e = norm.span(start, end)
                    found.append(Finding(s, e, "PERSON", score, self.names.name))
        return resolve_overlaps(found)

    def scan_unfinished(self, text: str, floor: int) -> tuple[list[Finding], int]:
        """Findings in an unfinished `text` and where its undecided tail starts.

        Used by the stream scanner: characters from the returned position on (len(text)
        when none) could still become (part of) an identifier, so they wait for the next
        chunk. Positions are in `text` as given.
        """
        norm = normalize(text)
        fresh = norm.text[floor:] if norm.origin is None else norm.text
        relevant = tuple(r for r in self.recognizers if r.relevant(fresh))
        if not relevant:  # nothing new could start or continue an identifier
            return [], len(text)
        return self._findings(norm, self.min_score, relevant), self._hold_from(norm, text, floor, relevant)

    def _hold_from(self, norm: Normalized, text: str, floor: int,
                   recognizers: tuple[Recognizer, ...]) -> int:
        hold = len(norm.text)
        for rec in recognizers:
            start = rec.partial_start(norm.text, 0)
            if start is not None and start < hold:
                hold = start
        if hold >= len(norm.text):
            return len(text)
        return max(floor, norm.span(hold, hold + 1)[0])
