"""Masking identifiers in model output, streamed or whole, and restoring this request's originals.

A streamed answer arrives a token at a time, so an identifier is usually split
across SSE chunks (`090-` `12` `34-` ...). Each choice of the answer has a
`TextMasker` that emits text as soon as nothing after it could still become an
identifier: the recognisers' patterns are run with partial matching
(`regex`'s `partial=True`) over the undecided tail, and only the suffix from
the earliest partial match on waits for the next chunk. Text with no digit,
'@' or prefecture-like start in its tail is forwarded at once, so TTFT moves by
the scan's cost only. The last characters already sent stay as context, so a
context word (口座番号) in one chunk still qualifies the number in the next.

When the request's values were masked with numbered placeholders and
`restore` is set, placeholders in the answer ([個人番号_1], also when split)
are replaced by the originals: for this request only, since the mapping lives
in this object and nowhere else.

`OutputFilter.filter_block` takes the complete SSE events the relay forwards
and rewrites only the events whose text changed (re-serialised compactly in
the same key order, so the usage meter reads them as before).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import regex

from serving.config.pii_entities import placeholder
from serving.pii.detector import Detector

_CONTEXT_CHARS = 32
_EVENT_END = b"\n\n"
_DATA = b"data: {"


class TextMasker:
    """One stream of text (one choice): feed chunks, get what may be sent now."""

    def __init__(self, detector: Detector, types: frozenset[str], restore: dict[str, str],
                 counts: Counter):
        self._detector = detector
        self._types = types
        self._restore = restore
        self._restore_re = _placeholder_pattern(restore) if restore else None
        self._counts = counts
        self._tail = ""  # original text already emitted, kept as context
        self._pending = ""

    def feed(self, text: str, *, final: bool = False) -> str:
        window = self._tail + self._pending + text
        floor = len(self._tail)
        if len(window) == floor:
            return ""
        if self._types:
            every, hold = self._detector.scan_unfinished(window, floor)
        else:
            every, hold = [], len(window)
        cut = len(window) if final else self._hold_from(window, floor, hold)
        found = [f for f in every if f.entity in self._types and f.end > floor]
        for f in found:  # an identifier that runs past the cut waits whole
            if f.start < cut < f.end:
                cut = max(floor, f.start)
        findings = [f for f in found if f.end <= cut]
        out: list[str] = []
        pos = floor
        for f in findings:
            if f.end <= pos:
                continue
            out.append(window[pos:max(pos, f.start)])
            out.append(placeholder(f.entity))
            self._counts[f.entity] += 1
            pos = f.end
        out.append(window[pos:cut])
        emitted = "".join(out)
        if self._restore_re is not None and "[" in emitted:
            emitted = self._restore_re.sub(lambda m: self._restore.get(m.group(0), m.group(0)), emitted)
        self._tail = window[max(0, cut - _CONTEXT_CHARS):cut]
        self._pending = window[cut:]
        return emitted

    def _hold_from(self, window: str, floor: int, cut: int) -> int:
        if self._restore_re is not None:
            for match in self._restore_re.finditer(window, floor, partial=True):
                if match.partial:
                    cut = min(cut, match.start())
                    break
        return max(cut, floor)


def _placeholder_pattern(restore: dict[str, str]) -> regex.Pattern:
    labels = sorted({k[1:].rsplit("_", 1)[0] for k in restore}, key=len, reverse=True)
    return regex.compile(r"\[(?:" + "|".join(regex.escape(x) for x in labels) + r")_[0-9]+\]")


class OutputFilter:
    """Per request: masks the answer's identifiers of `types` and restores placeholders."""

    def __init__(self, detector: Detector, types: frozenset[str], *, operation: str,
                 restore: dict[str, str] | None = None,
                 on_found: Callable[[dict[str, int]], None] | None = None):
        self._detector = detector
        self._types = types
        self._restore = restore or {}
        self._chat = operation == "chat"
        self._maskers: dict[int, TextMasker] = {}
        self.counts: Counter = Counter()  # identifiers masked in the answer, per type
        self._reported: Counter = Counter()
        self._on_found = on_found

    def _masker(self, index: int) -> TextMasker:
        masker = self._maskers.get(index)
        if masker is None:
            masker = self._maskers[index] = TextMasker(self._detector, self._types, self._restore,
                                                       self.counts)
        return masker

    def filter_block(self, block: bytes) -> bytes:
        """Complete SSE events in, the same events out with their text masked."""
        if _DATA not in block:
            return block
        out: list[bytes] = []
        changed = False
        for event in block.split(_EVENT_END):
            if event.startswith(_DATA) and b'"choices":[{' in event:
                new = self._event(event)
                if new is not event:
                    changed = True
                    event = new
            out.append(event)
        return _EVENT_END.join(out) if changed else block

    def _event(self, event: bytes) -> bytes:
        try:
            data = json.loads(event[6:])
        except ValueError:
            return event
        changed = False
        for choice in data.get("choices") or ():
            holder, key = (choice.get("delta"), "content") if self._chat else (choice, "text")
            if not isinstance(holder, dict):
                continue
            text = holder.get(key)
            final = choice.get("finish_reason") is not None
            if not isinstance(text, str):
                if not final:
                    continue
                text = ""
            emitted = self._masker(int(choice.get("index") or 0)).feed(text, final=final)
            if emitted != text:
                holder[key] = emitted
                changed = True
        if not changed:
            return event
        self._report()
        return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    def filter_body(self, body: bytes) -> bytes:
        """A whole (non-streamed) answer: every choice's text masked and restored."""
        try:
            data = json.loads(body)
        except ValueError:
            return body
        changed = False
        for choice in data.get("choices") or ():
            holder, key = (choice.get("message"), "content") if self._chat else (choice, "text")
            if isinstance(holder, dict) and isinstance(holder.get(key), str):
                masker = TextMasker(self._detector, self._types, self._restore, self.counts)
                emitted = masker.feed(holder[key], final=True)
                if emitted != holder[key]:
                    holder[key] = emitted
                    changed = True
        if not changed:
            return body
        self._report()
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    def _report(self) -> None:
        """Tell the metrics about identifiers masked since the last report (types, counts)."""
        if self._on_found is None:
            return
        new = {t: n - self._reported.get(t, 0) for t, n in self.counts.items()
               if n > self._reported.get(t, 0)}
        if new:
            self._reported.update(new)
            self._on_found(new)
