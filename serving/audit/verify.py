"""Reading the audit trail back: decrypt, check every chain, report gaps and tampering.

For a range of days (Asia/Tokyo), every segment object is downloaded,
authenticated (AES-GCM: any altered, moved or dropped frame fails) and
decrypted, and each chain is walked in order: sequence numbers must be
contiguous and every record must carry the digest of the one before it. The
first segment of a chain inside the range is the anchor (its predecessor may
lie before the range); a chain that starts at segment 0 must start at the
genesis digest. If the chain heads recorded in the shared store are given, a
chain whose last uploaded records are missing is reported too.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag

from serving.audit import crypto, segment
from serving.audit.objectstore import TOKYO, ObjectStore, day_prefix


@dataclass
class Problem:
    chain: str
    kind: str  # tampered | gap | broken_link | bad_segment | missing_tail | duplicate
    detail: str
    key: str | None = None

    def as_dict(self) -> dict:
        return self.__dict__


@dataclass
class Report:
    objects: int = 0
    records: int = 0
    chains: dict[str, dict] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "objects": self.objects,
            "records": self.records,
            "chains": self.chains,
            "problems": [p.as_dict() for p in self.problems],
        }


def days(start: datetime, end: datetime) -> Iterator[datetime]:
    day = start.astimezone(TOKYO).replace(hour=0, minute=0, second=0, microsecond=0)
    last = end.astimezone(TOKYO)
    while day <= last:
        yield day
        day += timedelta(days=1)


def _objects(store: ObjectStore, start: datetime, end: datetime) -> dict[str, list[tuple[int, str]]]:
    by_chain: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for day in days(start, end):
        for key in store.list(day_prefix(store.prefix, day)):
            parts = key.rsplit("/", 2)
            if len(parts) != 3:
                continue
            chain, name = parts[1], parts[2]
            try:
                by_chain[chain].append((int(name.split(".")[0]), key))
            except ValueError:
                continue
    for entries in by_chain.values():
        entries.sort()
    return by_chain


def walk(
    store: ObjectStore,
    keys: crypto.DataKeys,
    start: datetime,
    end: datetime,
    *,
    heads: dict[str, dict] | None = None,
) -> tuple[Report, list[dict[str, Any]]]:
    """Verify everything in [start, end]; return the report and the decrypted records in range."""
    report = Report()
    records: list[dict[str, Any]] = []
    lo, hi = start.timestamp(), end.timestamp()
    found = _objects(store, start, end)
    for chain, head in sorted((heads or {}).items()):
        if chain not in found and lo <= float(head.get("time", 0)) <= hi:
            report.problems.append(Problem(
                chain, "missing_tail", f"the store recorded records up to {head['last_seq']}, "
                "but no object of this chain is in the archive"))
    for chain, entries in sorted(found.items()):
        expected_seq: int | None = None
        prev: str | None = None
        last_segment: int | None = None
        count = 0
        for segment_no, key in entries:
            report.objects += 1
            if last_segment is not None and segment_no != last_segment + 1:
                report.problems.append(Problem(chain, "gap", f"segment(s) {last_segment + 1}..{segment_no - 1} missing", key))
                expected_seq, prev = None, None  # re-anchor after a gap
            last_segment = segment_no
            try:
                header, frames, clean = segment.read(store.get(key))
                data_key = keys.unwrap(header.data_key)
            except Exception as exc:
                report.problems.append(Problem(chain, "bad_segment", f"unreadable: {exc}", key))
                expected_seq, prev = None, None
                continue
            if not clean:
                report.problems.append(Problem(chain, "tampered", "segment ends inside a frame", key))
            if header.chain != chain or header.segment != segment_no:
                report.problems.append(Problem(chain, "tampered", "header does not match its object name", key))
            if expected_seq is None and segment_no == 0:
                expected_seq, prev = 0, segment.GENESIS
            if expected_seq is not None and header.first_seq != expected_seq:
                report.problems.append(Problem(
                    chain, "gap", f"records {expected_seq}..{header.first_seq - 1} missing", key))
                prev = None
            expected_seq = header.first_seq
            for index, frame in enumerate(frames):
                try:
                    plain = crypto.decrypt(data_key, frame, segment.aad(chain, segment_no, index))
                except InvalidTag:
                    report.problems.append(Problem(
                        chain, "tampered", f"record {index} of segment {segment_no} fails authentication", key))
                    prev = None
                    expected_seq += 1
                    continue
                record = json.loads(plain)
                if record.get("seq") != expected_seq:
                    report.problems.append(Problem(
                        chain, "gap", f"expected record {expected_seq}, found {record.get('seq')}", key))
                elif prev is not None and record.get("prev_digest") != prev:
                    report.problems.append(Problem(
                        chain, "broken_link", f"record {expected_seq} does not follow its predecessor", key))
                prev = segment.digest(plain)
                expected_seq = record.get("seq", expected_seq) + 1
                count += 1
                report.records += 1
                if lo <= record.get("time", 0) <= hi:
                    records.append(record)
        head = (heads or {}).get(chain)
        if head is not None and expected_seq is not None and int(head["last_seq"]) >= expected_seq:
            report.problems.append(Problem(
                chain, "missing_tail",
                f"the store recorded records up to {head['last_seq']}, the archive ends at {expected_seq - 1}"))
        report.chains[chain] = {"segments": len(entries), "records": count,
                                "last_seq": (expected_seq - 1) if expected_seq is not None else None}
    return report, records
