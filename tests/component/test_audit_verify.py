"""Verify finds every kind of loss: first, middle, last segment, whole chain, manifest, tail.

Archives are real: the spool writes segments, the uploader stores them with their chain
manifest in a directory (or S3 on the moto server), the chain heads go to a real Redis.
Losses are made the way an intruder or a broken disk would: by deleting or cutting files.
Segments of earlier days come from a spool whose clock is set back (the whole process's
`time.time`, so chain ids, segment headers and record times agree).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from serving.audit import segment
from serving.audit.crypto import LocalKeyFileKeys
from serving.audit.manifest import decrypt_manifest, manifest_key
from serving.audit.objectstore import TOKYO, DirectoryStore
from serving.audit.record import capture_begin, capture_end
from serving.audit.spool import AuditSpool, recover_abandoned
from serving.audit.trail import redis_heads
from serving.audit.uploader import Uploader
from serving.audit.verify import walk
from serving.config import DirectorySink
from tests.component.test_audit import CRASHING_WRITER, record
from tests.component.test_audit_trail import answered, make_ctx
from tests.servers import start_redis

DAY = 86400.0


class Archive:
    """One chain written by a real spool and uploaded to a directory archive."""

    def __init__(self, root: Path, *, per_segment: int, on_uploaded=None):
        self.keys = LocalKeyFileKeys(root / "audit.key")
        self.store = DirectoryStore(DirectorySink(path=str(root / "archive")))
        self.spool_dir = root / "spool"
        self.spool = AuditSpool(self.spool_dir, self.keys, app="t", batch_max_records=per_segment,
                                batch_max_s=600)
        self.chain = self.spool.chain
        self.on_uploaded = on_uploaded
        self.next = 0

    def write(self, n: int) -> None:
        async def go():
            for i in range(self.next, self.next + n):  # one by one: records stay in order
                await self.spool.append(record(i))

        asyncio.run(go())
        self.next += n

    def append(self, *records: dict) -> None:
        async def go():
            for r in records:
                await self.spool.append(r)

        asyncio.run(go())

    def finish(self) -> Archive:
        self.spool.close()
        Uploader(self.spool_dir, self.store, self.keys, on_uploaded=self.on_uploaded).upload_once()
        return self

    def segments(self) -> list[Path]:
        return sorted(Path(self.store.root).rglob("*.gvaudit"), key=lambda p: p.name)

    def manifest_path(self) -> Path:
        return Path(self.store.root) / manifest_key(self.store.prefix, self.chain)

    def verify(self, start: datetime | None = None, end: datetime | None = None, heads=None):
        now = datetime.now(TOKYO)
        start = start or now - timedelta(hours=1)
        end = end or now + timedelta(hours=1)
        return walk(self.store, self.keys, start, end, heads=heads)


@pytest.fixture
def clock(monkeypatch):
    """Set the process's wall clock back by `state["offset"]` seconds."""
    real = time.time
    state = {"offset": 0.0}
    monkeypatch.setattr(time, "time", lambda: real() - state["offset"])
    return state


def day_range(days_ago_first: int, days_ago_last: int) -> tuple[datetime, datetime]:
    today = datetime.now(TOKYO).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=days_ago_first)
    last = today - timedelta(days=days_ago_last) + timedelta(days=1) - timedelta(microseconds=1)
    return first, last


def kinds(report) -> list[str]:
    return [p.kind for p in report.problems]


def cut(path: Path, drop_bytes: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-drop_bytes])


def frame_boundary_cut(path: Path, keep_frames: int) -> None:
    data = path.read_bytes()
    _, frames, _ = segment.read(data)
    path.write_bytes(data[: segment.header_end(data) + sum(4 + len(f) for f in frames[:keep_frames])])


@pytest.fixture
def chain(tmp_path):
    archive = Archive(tmp_path, per_segment=4)
    archive.write(14)  # segments 0..3: 4 + 4 + 4 + 2 records
    return archive.finish()


def test_an_intact_chain_verifies_and_has_a_manifest(chain):
    report, records = chain.verify()
    assert report.status == "ok" and report.records == 14 and report.objects == 4, report.as_dict()
    manifest = decrypt_manifest(chain.keys, chain.manifest_path().read_bytes(), chain.chain)
    assert (manifest.last_segment, manifest.last_seq) == (3, 13)
    assert manifest.last_digest == segment.digest(segment.canonical(records[-1]))
    assert b"req-" not in chain.manifest_path().read_bytes()  # encrypted like the segments


@pytest.mark.parametrize("index, expect", [
    (0, "segment 0 missing (the chain's first)"),
    (1, "segment 1 missing"),
    (3, "segment 3 missing (the chain's last)"),
])
def test_a_deleted_segment_is_found_wherever_it_was(chain, index, expect):
    chain.segments()[index].unlink()
    report, _ = chain.verify()
    assert report.status == "broken" and report.exit_code == 2
    assert expect in [p.detail for p in report.problems if p.kind == "gap"], report.as_dict()


def test_the_first_segment_is_missed_even_without_the_manifest(chain):
    """Chain ids carry their creation time: a chain created in the range starts there."""
    chain.segments()[0].unlink()
    chain.manifest_path().unlink()
    report, _ = chain.verify()
    assert "missing_manifest" in kinds(report)
    assert "segment 0 missing (the chain's first)" in [p.detail for p in report.problems]


def test_a_middle_segment_is_missed_even_without_the_manifest(chain):
    chain.segments()[2].unlink()
    chain.manifest_path().unlink()
    report, _ = chain.verify()
    assert [(p.kind, p.detail) for p in report.problems] == [
        ("missing_manifest", "the chain has no manifest in the archive: deleted segments of it cannot "
         "all be detected"), ("gap", "segment 2 missing")]


def test_a_deleted_chain_is_found_from_its_manifest(chain):
    for path in chain.segments():
        path.unlink()
    report, _ = chain.verify()
    assert [(p.kind, p.detail) for p in report.problems] == [
        ("gap", "segments 0..3 missing (the chain's first, the chain's last)")]


def test_a_deleted_manifest_is_reported(chain):
    chain.manifest_path().unlink()
    report, _ = chain.verify()
    assert kinds(report) == ["missing_manifest"] and report.exit_code == 2


def test_a_forged_manifest_does_not_authenticate(chain):
    stored = json.loads(chain.manifest_path().read_bytes())
    blob = bytearray(stored["sealed"].encode())
    blob[20] = ord("A") if blob[20] != ord("A") else ord("B")
    stored["sealed"] = blob.decode()
    chain.manifest_path().write_text(json.dumps(stored))
    report, _ = chain.verify()
    assert "tampered" in kinds(report)


def test_truncation_mid_frame_and_at_a_frame_boundary(chain):
    last = chain.segments()[-1]
    frame_boundary_cut(last, keep_frames=1)  # a clean cut: only the manifest knows
    report, _ = chain.verify()
    assert kinds(report) == ["missing_tail"], report.as_dict()
    cut(last, 3)  # now also inside a frame
    report, _ = chain.verify()
    assert "tampered" in kinds(report) and "missing_tail" in kinds(report)


def test_a_middle_segment_cut_at_a_frame_boundary_leaves_a_gap(chain):
    frame_boundary_cut(chain.segments()[1], keep_frames=2)
    report, _ = chain.verify()
    assert "records 6..7 missing" in [p.detail for p in report.problems]


@pytest.fixture
def redis(tmp_path):
    server = start_redis(tmp_path / "redis")
    import redis as redis_lib

    client = redis_lib.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()


def heads_of(client) -> dict:
    return {k.decode(): json.loads(v) for k, v in client.hgetall("audit:heads").items()}


def test_shared_store_heads_catch_a_replayed_manifest_and_a_vanished_chain(tmp_path, redis):
    archive = Archive(tmp_path, per_segment=4)
    uploader = Uploader(archive.spool_dir, archive.store, archive.keys, own_chain=archive.chain,
                        on_uploaded=redis_heads(redis, "audit:heads"))
    archive.write(4)
    wait_for(lambda: uploader.upload_once() or archive.manifest_path().exists())
    saved = archive.manifest_path().read_bytes()  # a genuine manifest: up to segment 0
    archive.write(4)
    archive.spool.close()
    uploader.upload_once()
    assert heads_of(redis)[archive.chain]["last_segment"] == 1
    assert archive.verify(heads=heads_of(redis))[0].ok
    # the intruder deletes the last segment and puts the older genuine manifest back
    archive.segments()[1].unlink()
    archive.manifest_path().write_bytes(saved)
    assert archive.verify()[0].ok  # the archive alone is consistent again: hence the heads
    report, _ = archive.verify(heads=heads_of(redis))
    assert kinds(report) == ["missing_tail"], report.as_dict()
    # the whole chain and its manifest gone: only the shared store still knows it existed
    for path in archive.segments():
        path.unlink()
    archive.manifest_path().unlink()
    report, _ = archive.verify(heads=heads_of(redis))
    assert "missing_manifest" in kinds(report) and "missing_tail" in kinds(report), report.as_dict()


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_heads_of_a_recovered_chain_carry_the_real_digest(tmp_path, redis):
    """Recovery seals a killed writer's segment without knowing its digest; the uploader
    computes it, so manifest and shared-store head agree with the archive."""
    keys = LocalKeyFileKeys(tmp_path / "audit.key")
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(tmp_path / "spool"), str(keys.path)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout.readline().strip() == "durable"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert recover_abandoned(tmp_path / "spool") == 1
    store = DirectoryStore(DirectorySink(path=str(tmp_path / "archive")))
    Uploader(tmp_path / "spool", store, keys, on_uploaded=redis_heads(redis, "audit:heads")).upload_once()
    (chain, head), = heads_of(redis).items()
    report, records = walk(store, keys, *day_range(0, 0), heads=heads_of(redis))
    assert report.ok, report.as_dict()
    assert head["last_seq"] == 3 and head["last_digest"] == segment.digest(segment.canonical(records[-1]))
    manifest = decrypt_manifest(keys, (Path(store.root) / manifest_key(store.prefix, chain)).read_bytes(), chain)
    assert manifest.last_digest == head["last_digest"]


def three_day_chain(tmp_path, clock, **kw) -> Archive:
    """Segments 0-1 two days ago, 2-3 yesterday, 4-5 today (2 records each)."""
    clock["offset"] = 2 * DAY
    archive = Archive(tmp_path, per_segment=2, **kw)
    archive.write(4)
    clock["offset"] = DAY
    archive.write(4)
    clock["offset"] = 0.0
    archive.write(4)
    return archive.finish()


def test_a_range_after_the_chain_began_is_anchored_on_its_predecessor(tmp_path, clock):
    archive = three_day_chain(tmp_path, clock)
    report, records = archive.verify(*day_range(1, 0))
    assert report.status == "ok" and report.objects == 4 and [r["seq"] for r in records] == list(range(4, 12))
    archive.segments()[1].unlink()  # the predecessor, the day before the range
    report, _ = archive.verify(*day_range(1, 0))
    assert [p.detail for p in report.problems] == [
        "segment 1, the predecessor of the range's first segment 2, is missing"]


def test_the_predecessor_is_found_by_listing_back_when_the_manifest_is_gone(tmp_path, clock):
    archive = three_day_chain(tmp_path, clock)
    archive.manifest_path().unlink()
    report, _ = archive.verify(*day_range(1, 0))
    assert kinds(report) == ["missing_manifest"]  # but the link into the range was checked:
    archive.segments()[1].unlink()
    report, _ = archive.verify(*day_range(1, 0))
    assert "gap" in kinds(report)


def test_a_range_that_ends_before_the_chain_checks_the_link_out_of_it(tmp_path, clock):
    archive = three_day_chain(tmp_path, clock)
    assert archive.verify(*day_range(2, 2))[0].status == "ok"
    frame_boundary_cut(archive.segments()[1], keep_frames=1)  # the range's last segment
    report, _ = archive.verify(*day_range(2, 2))
    assert kinds(report) == ["missing_tail"], report.as_dict()


def test_a_request_ending_after_midnight_is_closed_by_the_next_days_segment(tmp_path, clock):
    clock["offset"] = DAY
    archive = Archive(tmp_path, per_segment=1)
    ctx = make_ctx("midnight-1")
    ctx.wall_time = time.time()  # the dataclass default holds the unpatched clock
    archive.append(capture_begin(ctx))
    clock["offset"] = 0.0
    archive.append(capture_end(answered(ctx)))
    archive.finish()
    yesterday = day_range(1, 1)
    report, records = archive.verify(*yesterday)
    assert report.status == "ok", report.as_dict()
    assert [r["type"] for r in records] == ["begin", "end"]  # the end comes along for export
    archive.segments()[1].unlink()
    report, _ = archive.verify(*yesterday)
    assert [u["request_id"] for u in report.unclosed] == ["midnight-1"]
    assert "segment 1, which follows the range, is missing" in [p.detail for p in report.problems]
