"""How far the audit uploader is behind on this node: the oldest record not yet uploaded.

A record is uploaded with its segment, and a segment's header carries the time it was
opened, its first record's time. The oldest pending segment of each chain is the one with
the lowest number (chains write and upload in order), so one header per chain is read,
however long an object-store outage has let the spool grow. Open segments count too: a
key-service outage keeps a segment open and taking records (serving/audit/spool.py), and
those records are not uploaded either.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from serving.audit import segment

_PENDING = (".open", ".sealed")
_HEAD_BYTES = 64 * 1024  # a header is a few hundred bytes: the wrapped data key and names


@dataclass(frozen=True)
class Backlog:
    oldest_age_s: float  # 0 when nothing waits
    spool_bytes: int


def scan(spool_dir: Path, now: float | None = None) -> Backlog:
    now = time.time() if now is None else now
    oldest: float | None = None
    total = 0
    try:
        chains = [p for p in Path(spool_dir).iterdir() if p.is_dir()]
    except OSError:
        return Backlog(0.0, 0)
    for chain in chains:
        first: Path | None = None
        try:
            for path in chain.iterdir():
                if path.suffix not in _PENDING:
                    continue
                try:
                    total += path.stat().st_size
                except OSError:  # uploaded (deleted) while we looked
                    continue
                if first is None or path.stem < first.stem:
                    first = path
        except OSError:
            continue
        created = _created(first) if first is not None else None
        if created is not None and (oldest is None or created < oldest):
            oldest = created
    return Backlog(max(0.0, now - oldest) if oldest is not None else 0.0, total)


def _created(path: Path) -> float | None:
    try:
        with path.open("rb") as f:
            head = f.read(_HEAD_BYTES)
        end = segment.header_end(head)
        return float(json.loads(head[len(segment.MAGIC) + 4:end])["created"])
    except Exception:  # noqa: BLE001 - any unreadable header
        return None  # gone, or a header still being written: the next round sees it
