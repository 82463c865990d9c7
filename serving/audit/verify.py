"""Reading the audit trail back: decrypt, check every chain end to end, report what is wrong.

For a range of days (Asia/Tokyo), every segment object is downloaded,
authenticated (AES-GCM with the chain, segment and position as associated
data: an altered, moved or dropped frame fails) and decrypted, and each chain
is walked in order: sequence numbers contiguous, every record carrying the
digest of the one before it.

Where a chain starts and ends is not taken from what happens to be in the
archive, since deletion would then go unnoticed:

* Start. Chain ids begin with their creation time. A chain created inside
  the range must start there, at segment 0 and the genesis digest. A chain
  created earlier is anchored on the predecessor of its first segment in the
  range, looked up before the range (a missing predecessor is a gap).
* Contents and end. Each chain's manifest (manifest.py) says which segments
  are stored under which day and where the chain ends; the chain heads the
  uploaders record in the shared store are a second witness. Segments the
  manifest lists but the archive lacks, a last segment shorter than the
  manifest says, a manifest older than the shared store's head, or a
  manifest that is missing altogether are all reported. When the range ends
  before the chain does, the first segment after the range must continue it.

Requests whose begin record (in the range) has no end record are reported
as unclosed; ends that fall into the next day's segments are looked for there.

Speed and memory. A day is ~17k segments per router replica, each with its own data key (one
KMS call). The segments of the range are fetched, unwrapped and decrypted by a bounded thread
pool a window ahead of the walk (`workers` x 4 segments in memory), while the chains are still
walked in order on one thread. `keep_records=False` (`audit verify`) keeps no records: only the
requests still open and per-chain counters, so memory does not grow with the range.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag

from serving.audit import crypto, segment
from serving.audit.manifest import ChainManifest, ManifestInvalid, decrypt_manifest, manifest_prefix
from serving.audit.objectstore import TOKYO, ObjectStore, day_key, parse_key, segment_day
from serving.audit.report import Problem, Report
from serving.audit.segment import chain_created

if TYPE_CHECKING:
    from serving.progress import ProgressSink

__all__ = ["Problem", "Report", "days", "walk"]

_DAY = "%Y/%m/%d"
_NO_CREATION_LOOKBACK_DAYS = 31  # how far back to look for a predecessor of a chain of unknown age
_MAX_EMPTY_PREDECESSORS = 8

Anchor = tuple[int, str | None]  # (sequence number of the next record, digest of the last one)


def days(start: datetime, end: datetime) -> Iterator[datetime]:
    day = start.astimezone(TOKYO).replace(hour=0, minute=0, second=0, microsecond=0)
    last = end.astimezone(TOKYO)
    while day <= last:
        yield day
        day += timedelta(days=1)


def _shift(day: str, n: int) -> str:
    return (datetime.strptime(day, _DAY) + timedelta(days=n)).strftime(_DAY)


@dataclass
class _Segment:
    key: str
    header: segment.SegmentHeader
    plains: list[bytes | None]  # decrypted records in order; None where authentication failed


@dataclass
class _Decoded:
    """One segment read, its data key unwrapped and its frames decrypted (no reporting yet)."""

    header: segment.SegmentHeader | None
    clean: bool = True
    plains: list[bytes | None] | None = None
    error: str | None = None  # unreadable header or data key


def _decode(keys: crypto.DataKeys, chain: str, n: int, data: bytes) -> _Decoded:
    try:
        header, frames, clean = segment.read(data)
        data_key = keys.unwrap(header.data_key)
    except Exception as exc:
        return _Decoded(None, error=f"unreadable: {type(exc).__name__}: {exc}")
    plains: list[bytes | None] = []
    for index, frame in enumerate(frames):
        try:
            plains.append(crypto.decrypt(data_key, frame, segment.aad(chain, n, index)))
        except InvalidTag:
            plains.append(None)
    return _Decoded(header, clean, plains)


_ABSENT = _Decoded(None, error="absent")  # the object was not there when fetched


class _Prefetch:
    """Fetch + decode the planned segments in a bounded pool, a window ahead of the walk."""

    def __init__(self, fetch: Callable[[str, str, int], _Decoded], plan: list[tuple[str, str, int]],
                 workers: int):
        self._fetch, self._plan, self._window = fetch, iter(plan), max(1, workers) * 4
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="audit-fetch")
        self._ahead: deque[tuple[str, Future]] = deque()
        self._keys: set[str] = set()
        self._fill()

    def _fill(self) -> None:
        while len(self._ahead) < self._window:
            item = next(self._plan, None)
            if item is None:
                return
            self._ahead.append((item[0], self._pool.submit(self._fetch, *item)))
            self._keys.add(item[0])

    def take(self, key: str) -> _Decoded | None:
        """The decoded segment if it was planned; None: not planned, read it directly."""
        if key not in self._keys:
            return None
        while self._ahead:
            ahead, future = self._ahead.popleft()
            self._keys.discard(ahead)
            if ahead == key:
                self._fill()
                return future.result()
            future.cancel()  # planned but skipped by the walk
        return None

    def close(self) -> None:
        for _, future in self._ahead:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


def walk(
    store: ObjectStore,
    keys: crypto.DataKeys,
    start: datetime,
    end: datetime,
    *,
    heads: dict[str, dict] | None = None,
    workers: int = 8,
    keep_records: bool = True,
    progress: ProgressSink | None = None,
) -> tuple[Report, list[dict[str, Any]]]:
    """Verify everything in [start, end]; return the report and the decrypted records in range.

    The records are those whose time is in the range, plus the end records of requests that
    began in the range and ended after it (none when `keep_records` is False). `progress` is
    told the number of segments in the range, then each one walked.
    """
    return _Verifier(store, keys, start, end, heads or {}, workers=workers,
                     keep_records=keep_records, progress=progress).run()


class _Verifier:
    def __init__(self, store: ObjectStore, keys: crypto.DataKeys, start: datetime, end: datetime,
                 heads: dict[str, dict], *, workers: int = 8, keep_records: bool = True,
                 progress: ProgressSink | None = None):
        self.store, self.keys, self.heads = store, keys, heads
        self.workers, self.keep_records, self.progress = workers, keep_records, progress
        self._prefetch: _Prefetch | None = None
        self.lo, self.hi = start.timestamp(), end.timestamp()
        self.days = [d.strftime(_DAY) for d in days(start, end)]
        self.first_day, self.last_day = self.days[0], self.days[-1]
        self.next_day = _shift(self.last_day, 1)
        self.report = Report()
        self.records: list[dict[str, Any]] = []
        self.late: list[dict[str, Any]] = []  # closing records found after the range
        self.begins: dict[str, dict] = {}
        self.open_by_chain: dict[str, set[str]] = {}  # begun in the range, no end seen yet
        self.closed: set[str] = set()
        self._listings: dict[tuple[str, str], dict[int, str]] = {}

    # -- the whole range ----------------------------------------------------------------------
    def run(self) -> tuple[Report, list[dict[str, Any]]]:
        manifests = self._manifests()  # before listing segments: later uploads only add segments
        found = self._objects()
        chains = set(found)
        chains |= {c for c, m in manifests.items() if m is not None and set(m.days) & set(self.days)}
        chains |= {c for c, h in self.heads.items() if c not in manifests and self._overlaps(c, h)}
        # the walk reads each chain's segments in the range in ascending order, chains sorted
        plan = [(found[c][n][1], c, n) for c in sorted(chains) if c in found for n in sorted(found[c])]
        if self.progress is not None:
            self.progress.start(len(plan))
        self._prefetch = _Prefetch(self._fetch, plan, self.workers)
        try:
            for chain in sorted(chains):
                self._chain(chain, found.get(chain, {}), chain in manifests, manifests.get(chain),
                            self.heads.get(chain))
        finally:
            self._prefetch.close()
        self.report.unclosed = sorted(
            (b for rid, b in self.begins.items() if rid not in self.closed),
            key=lambda b: (b["time"] or 0, b["request_id"]),
        )
        late = [r for r in self.late if r.get("request_id") in self.begins]
        return self.report, self.records + late

    def _manifests(self) -> dict[str, ChainManifest | None]:
        """Every chain's manifest that may concern the range; None where one does not open."""
        out: dict[str, ChainManifest | None] = {}
        base = manifest_prefix(self.store.prefix)
        for key in self.store.list(base):
            chain = key[len(base):].removesuffix(".json")
            created = chain_created(chain)
            if "/" in chain or not key.endswith(".json") or (created is not None and created > self.hi):
                continue
            try:
                out[chain] = decrypt_manifest(self.keys, self.store.get(key), chain)
            except ManifestInvalid as exc:
                out[chain] = None
                self.report.problem(chain, "tampered", str(exc), key)
        return out

    def _objects(self) -> dict[str, dict[int, tuple[str, str]]]:
        found: dict[str, dict[int, tuple[str, str]]] = {}
        for day in self.days:
            for key in self.store.list(f"{self.store.prefix.strip('/')}/{day}/"):
                parsed = parse_key(key)
                if parsed is None:
                    continue
                _, chain, number = parsed
                segs = found.setdefault(chain, {})
                if number in segs:
                    self.report.problem(chain, "duplicate", f"segment {number} is stored twice "
                                        f"(also as {segs[number][1]})", key)
                    continue
                segs[number] = (day, key)
        return found

    def _overlaps(self, chain: str, head: dict) -> bool:
        created = chain_created(chain)
        return (created is None or created <= self.hi) and float(head.get("time", 0)) >= self.lo

    # -- one chain ----------------------------------------------------------------------------
    def _chain(self, chain: str, segs: dict[int, tuple[str, str]], has_manifest: bool,
               manifest: ChainManifest | None, head: dict | None) -> None:
        created = chain_created(chain)
        numbers = set(segs)
        if manifest is not None:
            for day in self.days:
                numbers.update(manifest.segments_on(day))
            for n, (day, key) in sorted(segs.items()):
                if n <= manifest.last_segment and n not in manifest.segments_on(day):
                    self.report.problem(chain, "tampered", f"segment {n} is stored under {day}, its "
                                        f"manifest lists it under {manifest.day_of(n)}", key)
        elif not has_manifest:
            self.report.problem(chain, "missing_manifest", "the chain has no manifest in the archive: "
                                "deleted segments of it cannot all be detected")
        if numbers:
            # segments are created in order, so every number between two in the range is in it
            low = 0 if created is not None and segment_day(created) >= self.first_day else min(numbers)
            numbers = set(range(low, max(numbers) + 1))  # created in the range: it starts at 0
        ordered = sorted(numbers)
        stats = {"segments": len(segs), "records": 0, "last_seq": None, "manifest": manifest is not None}
        self.report.chains[chain] = stats
        anchor: Anchor | None = None
        after: dict[int, Anchor | None] = {}
        if ordered and ordered[0] > 0 and ordered[0] in segs:
            anchor = self._anchor_before(chain, ordered[0], manifest, created)
        missing: list[int] = []
        for n in ordered:
            if n not in segs:
                missing.append(n)
                anchor = None
                continue
            self._report_missing(chain, missing, manifest)
            missing = []
            anchor = self._walk_segment(chain, n, segs[n], anchor, stats)
            after[n] = anchor
        self._report_missing(chain, missing, manifest)
        if anchor is not None:
            stats["last_seq"] = anchor[0] - 1
        self._check_end(chain, ordered, after, manifest, head)

    def _report_missing(self, chain: str, missing: list[int], manifest: ChainManifest | None) -> None:
        if not missing:
            return
        first, last = missing[0], missing[-1]
        what = f"segment {first}" if first == last else f"segments {first}..{last}"
        notes = []
        if first == 0:
            notes.append("the chain's first")
        if manifest is not None and last == manifest.last_segment:
            notes.append("the chain's last")
        self.report.problem(chain, "gap", f"{what} missing" + (f" ({', '.join(notes)})" if notes else ""))

    def _walk_segment(self, chain: str, n: int, where: tuple[str, str], anchor: Anchor | None,
                      stats: dict) -> Anchor | None:
        day, key = where
        self.report.objects += 1
        seg = self._load(chain, n, key, day)
        if seg is None:
            return None
        expected_seq, prev = anchor if anchor is not None else (None, None)
        if n == 0 and anchor is None:
            expected_seq, prev = 0, segment.GENESIS
        if expected_seq is not None and seg.header.first_seq != expected_seq:
            self.report.problem(chain, "gap", f"records {expected_seq}..{seg.header.first_seq - 1} "
                                "missing", key)
            prev = None
        expected_seq = seg.header.first_seq
        for index, plain in enumerate(seg.plains):
            if plain is None:
                self.report.problem(chain, "tampered", f"record {index} of segment {n} fails "
                                    "authentication", key)
                prev, expected_seq = None, expected_seq + 1
                continue
            record = json.loads(plain)
            if record.get("seq") != expected_seq:
                self.report.problem(chain, "gap", f"expected record {expected_seq}, found "
                                    f"{record.get('seq')}", key)
            elif prev is not None and record.get("prev_digest") != prev:
                self.report.problem(chain, "broken_link", f"record {expected_seq} does not follow its "
                                    "predecessor", key)
            prev = segment.digest(plain)
            expected_seq = record.get("seq", expected_seq) + 1
            stats["records"] += 1
            self.report.records += 1
            self._note(record, chain)
        return expected_seq, prev

    # -- where the range meets the rest of the chain ------------------------------------------
    def _anchor_before(self, chain: str, first: int, manifest: ChainManifest | None,
                       created: float | None) -> Anchor | None:
        """Where the chain stands just before `first`, from its predecessor before the range."""
        for n in range(first - 1, max(-1, first - 1 - _MAX_EMPTY_PREDECESSORS), -1):
            key = self._locate_before(chain, n, manifest, created)
            data = self.store.get_if_exists(key) if key else None
            if data is None:
                self.report.problem(chain, "gap", f"segment {n}, the predecessor of the range's first "
                                    f"segment {first}, is missing")
                return None
            seg = self._parse(chain, n, key, data, None)
            if seg is None:
                return None
            if seg.plains:
                last = seg.plains[-1]
                if last is None:
                    return None  # reported by _parse's caller below
                return json.loads(last).get("seq", -2) + 1, segment.digest(last)
            if n == 0:
                return seg.header.first_seq, segment.GENESIS
        return None

    def _locate_before(self, chain: str, n: int, manifest: ChainManifest | None,
                       created: float | None) -> str | None:
        if manifest is not None:
            day = manifest.day_of(n)
            return day_key(self.store.prefix, day, chain, n) if day else None
        stop = segment_day(created) if created else _shift(self.first_day, -_NO_CREATION_LOOKBACK_DAYS)
        day = _shift(self.first_day, -1)
        while day >= stop:
            key = self._listing(day, chain).get(n)
            if key:
                return key
            day = _shift(day, -1)
        return None

    def _locate_after(self, chain: str, n: int, manifest: ChainManifest | None, until: str) -> str | None:
        if manifest is not None:
            day = manifest.day_of(n)
            return day_key(self.store.prefix, day, chain, n) if day and day <= until else None
        day = self.next_day
        while day <= until:
            key = self._listing(day, chain).get(n)
            if key:
                return key
            day = _shift(day, 1)
        return None

    def _listing(self, day: str, chain: str) -> dict[int, str]:
        if (day, chain) not in self._listings:
            out = {}
            for key in self.store.list(f"{self.store.prefix.strip('/')}/{day}/{chain}/"):
                parsed = parse_key(key)
                if parsed is not None:
                    out[parsed[2]] = key
            self._listings[(day, chain)] = out
        return self._listings[(day, chain)]

    def _check_end(self, chain: str, ordered: list[int], after: dict[int, Anchor | None],
                   manifest: ChainManifest | None, head: dict | None) -> None:
        """The chain's end: manifest and shared-store head against what the archive holds."""
        last = ordered[-1] if ordered else None
        tail = after.get(last) if last is not None else None
        if manifest is not None and head is not None:
            if int(head["last_seq"]) > manifest.last_seq:
                self.report.problem(chain, "missing_tail", f"the shared store recorded records up to "
                                    f"{head['last_seq']}, the manifest only up to {manifest.last_seq}")
            elif (int(head["last_seq"]) == manifest.last_seq and head.get("last_digest")
                  and manifest.last_digest and head["last_digest"] != manifest.last_digest):
                self.report.problem(chain, "tampered", "the manifest's last digest differs from the "
                                    "shared store's")
        if manifest is not None and last is not None and last >= manifest.last_segment:
            at_end = after.get(manifest.last_segment)
            if at_end is not None and (at_end[0] - 1 != manifest.last_seq or (
                    at_end[1] and manifest.last_digest and at_end[1] != manifest.last_digest)):
                self.report.problem(chain, "missing_tail", f"the manifest records the chain up to record "
                                    f"{manifest.last_seq}, segment {manifest.last_segment} ends at "
                                    f"record {at_end[0] - 1}")
            self._follow(chain, last + 1, None, manifest, self.next_day, link=False)
            return
        if manifest is not None and last is not None:
            until = max(self.next_day, manifest.day_of(last + 1) or self.next_day)
            self._follow(chain, last + 1, tail, manifest, until, link=True)
            return
        if head is None:
            if last is not None:
                self._follow(chain, last + 1, None, None, self.next_day, link=False)
            return
        head_seq = int(head["last_seq"])
        if last is None:
            if self.lo <= float(head.get("time", 0)) <= self.hi:
                self.report.problem(chain, "missing_tail", f"the shared store recorded records up to "
                                    f"{head_seq}, but no object of this chain is in the archive")
            return
        knows_more = tail is not None and head_seq >= tail[0]
        until = max(self.next_day, segment_day(float(head.get("time", 0)))) if knows_more else self.next_day
        missing = (f"the shared store recorded records up to {head_seq}, the archive ends at record "
                   f"{tail[0] - 1} (segment {last})" if knows_more else None)
        self._follow(chain, last + 1, tail if knows_more else None, None, until, link=knows_more,
                     missing=missing)

    def _follow(self, chain: str, n: int, tail: Anchor | None, manifest: ChainManifest | None,
                until: str, *, link: bool, missing: str | None = None) -> None:
        """Segments after the range: the first must continue the chain (when `link`), and the
        next day's close requests begun in the range."""
        first = True
        while (link and first) or self._pending(chain):
            key = self._locate_after(chain, n, manifest, until if first else self.next_day)
            data = self.store.get_if_exists(key) if key else None
            if data is None:
                if link and first:
                    kind = "gap" if manifest is not None else "missing_tail"
                    self.report.problem(chain, kind, missing or f"segment {n}, which follows the range, "
                                        "is missing")
                return
            seg = self._parse(chain, n, key, data, None)
            if seg is None:
                return
            if link and first and tail is not None:
                self._check_link(chain, n, key, seg, tail)
            for plain in seg.plains:
                if plain is not None:
                    record = json.loads(plain)
                    if record.get("type") in ("end", "request") and isinstance(record.get("request_id"), str):
                        self._close(record["request_id"])
                        if self.keep_records:
                            self.late.append(record)
            first, n = False, n + 1

    def _check_link(self, chain: str, n: int, key: str, seg: _Segment, tail: Anchor) -> None:
        expected_seq, prev = tail
        if seg.plains and seg.plains[0] is not None:
            record = json.loads(seg.plains[0])
            seq, linked = record.get("seq"), record.get("prev_digest")
        else:
            seq, linked = seg.header.first_seq, prev
        if seq != expected_seq or (prev is not None and linked != prev):
            self.report.problem(chain, "missing_tail", f"segment {n - 1} ends at record "
                                f"{expected_seq - 1}, but segment {n} continues from record "
                                f"{seq if seq is not None else '?'}", key)

    # -- reading segments ---------------------------------------------------------------------
    def _fetch(self, key: str, chain: str, n: int) -> _Decoded:
        """In a pool thread: download and decode one segment."""
        data = self.store.get_if_exists(key)
        return _ABSENT if data is None else _decode(self.keys, chain, n, data)

    def _load(self, chain: str, n: int, key: str, day: str) -> _Segment | None:
        decoded = self._prefetch.take(key) if self._prefetch is not None else None
        if decoded is None:
            decoded = self._fetch(key, chain, n)
        if self.progress is not None:
            self.progress.advance(1)
        if decoded is _ABSENT:
            self.report.problem(chain, "gap", f"segment {n} disappeared while being verified", key)
            return None
        return self._report_decoded(chain, n, key, decoded, day)

    def _parse(self, chain: str, n: int, key: str, data: bytes, day: str | None) -> _Segment | None:
        """Read, check and decrypt one segment; problems are reported, None if unusable."""
        return self._report_decoded(chain, n, key, _decode(self.keys, chain, n, data), day)

    def _report_decoded(self, chain: str, n: int, key: str, decoded: _Decoded,
                        day: str | None) -> _Segment | None:
        if decoded.header is None or decoded.plains is None:
            self.report.problem(chain, "bad_segment", decoded.error or "unreadable", key)
            return None
        header, clean, plains = decoded.header, decoded.clean, decoded.plains
        if not clean:
            self.report.problem(chain, "tampered", "segment ends inside a frame (truncated)", key)
        if header.chain != chain or header.segment != n or (
                day is not None and segment_day(header.created) != day):
            self.report.problem(chain, "tampered", "header does not match its object name", key)
        if day is None and any(p is None for p in plains):
            self.report.problem(chain, "tampered", f"a record of segment {n} (outside the range) fails "
                                "authentication", key)
        return _Segment(key, header, plains)

    # -- requests -----------------------------------------------------------------------------
    def _note(self, record: dict[str, Any], chain: str) -> None:
        kind, rid, when = record.get("type"), record.get("request_id"), record.get("time")
        if not isinstance(rid, str):
            kind = None  # a substitute without its id still counts as a record, not as a request
        in_range = isinstance(when, int | float) and self.lo <= when <= self.hi
        if kind == "begin" and in_range:
            self.begins[rid] = {"request_id": rid, "chain": chain, "time": when,
                                "tenant": record.get("tenant")}
            if rid not in self.closed:
                self.open_by_chain.setdefault(chain, set()).add(rid)
        elif kind in ("end", "request"):
            self._close(rid)
        if not self.keep_records:
            return
        if in_range:
            self.records.append(record)
        elif kind == "end":
            self.late.append(record)

    def _close(self, rid: Any) -> None:
        begun = self.begins.get(rid)
        if begun is not None:
            self.open_by_chain.get(begun["chain"], set()).discard(rid)
            if not self.keep_records:  # only open requests stay in memory
                del self.begins[rid]
                return
        self.closed.add(rid)

    def _pending(self, chain: str) -> bool:
        return bool(self.open_by_chain.get(chain))
