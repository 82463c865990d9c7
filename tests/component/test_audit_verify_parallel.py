"""`audit verify`'s parallel, bounded-memory walk reports exactly what the serial walk reports.

The archive is real (spool -> uploader -> directory store); damage is made by deleting and
cutting segment files. The serial walk (one worker, every record kept) is the reference.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from serving.audit.objectstore import TOKYO
from serving.audit.record import capture_begin, capture_end
from serving.audit.verify import walk
from tests.component.test_audit_trail import answered, make_ctx
from tests.component.test_audit_verify import Archive, cut
from tests.component.test_weights import Recorder


def _ctx(rid: str):
    ctx = make_ctx(rid)
    ctx.wall_time = time.time()
    return ctx


def _summary(report):
    return (report.status, report.objects, report.records, sorted(report.chains),
            [(p.kind, p.chain, p.detail, p.key) for p in report.problems],
            [u["request_id"] for u in report.unclosed])


def test_parallel_streaming_walk_matches_the_serial_one(tmp_path):
    archive = Archive(tmp_path, per_segment=3)
    archive.write(20)
    closed, still_open = _ctx("closed-1"), _ctx("open-1")
    archive.append(capture_begin(closed), capture_begin(still_open))
    archive.write(4)
    archive.append(capture_end(answered(closed)))
    archive.write(6)
    archive.finish()
    now = datetime.now(TOKYO)
    span = (now - timedelta(hours=1), now + timedelta(hours=1))

    def both():
        serial, records = walk(archive.store, archive.keys, *span, workers=1)
        progress = Recorder()
        parallel, none = walk(archive.store, archive.keys, *span, workers=8, keep_records=False,
                              progress=progress)
        assert none == [] and progress.total == progress.done == parallel.objects
        assert _summary(parallel) == _summary(serial)
        return serial, records

    intact, records = both()
    assert intact.status == "unclosed" and [u["request_id"] for u in intact.unclosed] == ["open-1"]
    assert len(records) == intact.records == 33 and intact.objects == 11  # 20+2+4+1+6, 3 a segment
    segments = archive.segments()
    segments[4].unlink()  # a gap in the middle
    cut(segments[7], 5)  # a truncated frame
    damaged, _ = both()
    assert {p.kind for p in damaged.problems} >= {"gap", "tampered"}
