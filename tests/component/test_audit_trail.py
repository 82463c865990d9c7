"""Begin and end records through the real AuditTrail: spool, uploader, directory archive, verify.

A request that reaches an engine is recorded twice: its begin record is durable before
dispatch, its end record before the last bytes. These tests drive the trail the way the
router does and read the archive back with the verifier.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from serving.audit.crypto import LocalKeyFileKeys
from serving.audit.merge import merge_requests
from serving.audit.objectstore import TOKYO, DirectoryStore
from serving.audit.record import capture_request
from serving.audit.spool import AuditSpool, recover_abandoned
from serving.audit.trail import AuditTrail
from serving.audit.uploader import Uploader
from serving.audit.verify import walk
from serving.config import AuditSettings, DirectorySink, LocalKeyFile, ModelRoute
from serving.request import APIError, Principal, RequestContext

SECRET = "機密性2: 住民Bの口座番号は 0123-4567"
MODEL = ModelRoute(id="tiny-llama-ja", max_model_len=2048, revision="dev-llama-v2")
OTHER = ModelRoute(id="tiny-qwen2-ja", max_model_len=2048, revision="dev-qwen2-v2")


def audit_settings(root: Path, **extra) -> AuditSettings:
    return AuditSettings(
        spool_dir=str(root / "spool"), sink=DirectorySink(path=str(root / "archive")),
        keys=LocalKeyFile(path=str(root / "audit.key")), **{"batch_max_records": 1000,
                                                              "batch_max_s": 60, **extra},
    )


def make_ctx(rid: str, *, tenant: str = "city", content: str = SECRET, stream: bool = True) -> RequestContext:
    """A request as the router's steps leave it just before dispatch."""
    payload = {"model": "default", "messages": [{"role": "user", "content": content}],
               "max_tokens": 16, "stream": stream}
    ctx = RequestContext(request_id=rid, operation="chat", client_request_id=f"client-{rid}",
                         scope={"type": "http", "client": ("10.1.2.3", 40000), "headers": []})
    ctx.principal = Principal(tenant=tenant, user="alice", method="api_key", credential_id="k1")
    ctx.confidentiality, ctx.usage_type = 2, "administrative"
    ctx.raw_body = json.dumps(payload, ensure_ascii=False).encode()
    ctx.payload, ctx.requested_model, ctx.stream = payload, "default", stream
    ctx.candidates = (MODEL, OTHER)
    return ctx


def answered(ctx: RequestContext, text: str = "回答です") -> RequestContext:
    """What the dispatcher records once the engine answered (as a stream)."""
    ctx.model, ctx.upstream, ctx.status = MODEL, "http://10.0.0.9:8001", 200
    ctx.attempts.append("tiny-llama-ja@http://10.0.0.9:8001: ok")
    ctx.usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    ctx.first_byte_at = ctx.started_at + 0.01
    for piece in text:
        event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
        ctx.response_chunks.append(b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n")
    return ctx


def today():
    now = datetime.now(TOKYO)
    return now - timedelta(hours=1), now + timedelta(hours=1)


def archive(root: Path) -> tuple[LocalKeyFileKeys, DirectoryStore]:
    return (LocalKeyFileKeys(root / "audit.key", create=False),
            DirectoryStore(DirectorySink(path=str(root / "archive"))))


def run(coro):
    return asyncio.run(coro)


def test_begin_then_end_is_two_records_merged_into_one_request(tmp_path):
    trail = AuditTrail(audit_settings(tmp_path), app="t", chain_hint="r1")

    async def go():
        ctx = make_ctx("req-1")
        await trail.begin(ctx)
        assert ctx.audit_begun and not ctx.audit_closed
        await trail.end(answered(ctx))
        assert ctx.audit_closed
        return ctx

    run(go())
    trail.close()
    keys, store = archive(tmp_path)
    report, records = walk(store, keys, *today())
    assert report.status == "ok" and report.exit_code == 0, report.as_dict()
    begin, end = records
    assert begin["type"] == "begin" and end["type"] == "end" and end["seq"] == begin["seq"] + 1
    assert begin["prompt"] == [{"role": "user", "content": SECRET}]
    assert begin["parameters"] == {"model": "default", "max_tokens": 16, "stream": True}
    assert begin["candidates"] == ["tiny-llama-ja", "tiny-qwen2-ja"]
    assert begin["client_request_id"] == "client-req-1" and begin["client"] == "10.1.2.3:40000"
    assert (begin["tenant"], begin["user"], begin["credential_id"], begin["confidentiality"],
            begin["usage_type"]) == ("city", "alice", "k1", 2, "administrative")
    assert "output" not in begin and "prompt" not in end  # each half carries its own part
    assert end["model_id"] == "tiny-llama-ja" and end["model_revision"] == "dev-llama-v2"
    assert end["attempts"] == ["tiny-llama-ja@http://10.0.0.9:8001: ok"]
    assert end["output"][0]["text"] == "回答です" and end["usage"]["completion_tokens"] == 2
    assert end["timings_ms"]["first_byte"] == pytest.approx(10, abs=0.01)
    (merged,) = merge_requests(records)
    assert merged["type"] == "request" and merged["closed"] is True
    assert merged["prompt"] == begin["prompt"] and merged["output"] == end["output"]
    assert merged["time"] == begin["time"] and merged["end_time"] == end["time"]
    assert merged["status"] == 200 and merged["seq"] == begin["seq"] and merged["end_seq"] == end["seq"]


def test_a_refusal_before_dispatch_is_one_complete_record(tmp_path):
    trail = AuditTrail(audit_settings(tmp_path), app="t")

    async def go():
        ctx = make_ctx("refused-1")
        ctx.status, ctx.error_code = 429, "rate_limited"
        await trail.end(ctx)
        assert ctx.audit_closed and not ctx.audit_begun

    run(go())
    trail.close()
    keys, store = archive(tmp_path)
    report, records = walk(store, keys, *today())
    assert report.ok
    (record,) = records
    assert record["type"] == "request" and record["status"] == 429 and record["error_code"] == "rate_limited"
    assert record["prompt"][0]["content"] == SECRET and record["output"] is None
    assert merge_requests(records)[0]["closed"] is True


def test_end_nowait_queues_once_and_never_after_an_end(tmp_path):
    trail = AuditTrail(audit_settings(tmp_path), app="t")

    async def go():
        gone = make_ctx("gone-1")
        await trail.begin(gone)
        gone.status, gone.error_code = 499, "client_disconnected"
        trail.end_nowait(gone)
        assert gone.audit_closed
        trail.end_nowait(gone)  # a second cleanup path: nothing more is queued
        await trail.end(gone)  # and an end after end_nowait neither
        done = make_ctx("done-1")
        await trail.begin(done)
        await trail.end(answered(done))
        trail.end_nowait(done)  # already closed: nothing
        never = make_ctx("never-1")  # cancelled before it began: a complete record
        never.status, never.error_code = 499, "client_disconnected"
        trail.end_nowait(never)

    run(go())
    trail.close()
    keys, store = archive(tmp_path)
    report, records = walk(store, keys, *today())
    assert report.status == "ok", report.as_dict()
    kinds = [(r["request_id"], r["type"]) for r in records]
    assert kinds == [("gone-1", "begin"), ("gone-1", "end"), ("done-1", "begin"), ("done-1", "end"),
                     ("never-1", "request")]
    assert records[1]["status"] == 499


def test_end_after_a_cancelled_wait_is_not_written_twice(tmp_path):
    """The router's task is cancelled while it waits for the end record; its cleanup path
    then calls end_nowait: the record that is already queued is the only one."""
    trail = AuditTrail(audit_settings(tmp_path), app="t")

    async def go():
        ctx = make_ctx("cancelled-1")
        await trail.begin(ctx)
        task = asyncio.ensure_future(trail.end(answered(ctx)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        trail.end_nowait(ctx)
        for _ in range(200):  # the write completes anyway and marks the request closed
            if ctx.audit_closed:
                break
            await asyncio.sleep(0.01)
        assert ctx.audit_closed

    run(go())
    trail.close()
    keys, store = archive(tmp_path)
    report, records = walk(store, keys, *today())
    assert report.status == "ok" and [r["type"] for r in records] == ["begin", "end"]


def test_begin_fails_with_503_when_the_spool_cannot_write(tmp_path):
    trail = AuditTrail(audit_settings(tmp_path), app="t")
    trail.spool.close()  # the writer is gone: nothing can become durable

    async def go():
        ctx = make_ctx("no-audit-1")
        with pytest.raises(APIError) as refused:
            await trail.begin(ctx)
        assert refused.value.status == 503 and refused.value.code == "audit_unavailable"
        assert SECRET not in refused.value.message
        assert not ctx.audit_begun
        with pytest.raises(APIError):
            await trail.end(ctx)
        assert not ctx.audit_closed
        with pytest.raises(APIError):  # a repeated end re-raises, it does not queue again
            await trail.end(ctx)
        trail.end_nowait(ctx)  # never raises

    run(go())
    trail.uploader.stop(flush=True)


KILLED_ROUTER = """
import asyncio, sys, time
from pathlib import Path
from serving.audit.trail import AuditTrail
from tests.component.test_audit_trail import answered, audit_settings, make_ctx
trail = AuditTrail(audit_settings(Path(sys.argv[1])), app="t", chain_hint="doomed")
async def go():
    finished = make_ctx("finished-1")
    await trail.begin(finished)
    await trail.end(answered(finished))
    streaming = make_ctx("streaming-1")
    await trail.begin(streaming)  # durable: the prompt may now go to the engine
asyncio.run(go())
print("dispatched", flush=True)
time.sleep(600)
"""


def test_a_router_killed_mid_stream_leaves_an_unclosed_request(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_ROUTER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout.readline().strip() == "dispatched"
    finally:
        proc.send_signal(signal.SIGKILL)  # no end record, no seal, no upload
        proc.wait()
    spool = tmp_path / "spool"
    assert recover_abandoned(spool) == 1
    keys, store = archive(tmp_path)
    Uploader(spool, store, keys).upload_once()
    report, records = walk(store, keys, *today())
    assert report.intact and report.status == "unclosed" and report.exit_code == 3, report.as_dict()
    assert [(u["request_id"], u["tenant"]) for u in report.unclosed] == [("streaming-1", "city")]
    assert report.unclosed[0]["chain"] in report.chains
    merged = {r["request_id"]: r for r in merge_requests(records)}
    assert merged["finished-1"]["closed"] is True
    unclosed = merged["streaming-1"]
    assert unclosed["closed"] is False and unclosed["prompt"][0]["content"] == SECRET
    assert unclosed["status"] is None and unclosed["output"] is None


def test_a_cancelled_wait_for_the_begin_still_pairs_with_its_end(tmp_path):
    """Cancelled while its begin record is on the way to disk: the cleanup's end_nowait must
    write an end record for that begin, not a second, complete record."""
    trail = AuditTrail(audit_settings(tmp_path), app="t")

    async def go():
        ctx = make_ctx("cancel-begin-1")
        task = asyncio.ensure_future(trail.begin(ctx))
        await asyncio.sleep(0)  # queued, not yet durable
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ctx.status, ctx.error_code = 499, "client_disconnected"
        trail.end_nowait(ctx)

    run(go())
    trail.close()
    keys, store = archive(tmp_path)
    report, records = walk(store, keys, *today())
    assert report.status == "ok", report.as_dict()
    assert [r["type"] for r in records] == ["begin", "end"]


def test_an_uploader_takes_its_own_chain_and_dead_ones_never_a_live_neighbours(tmp_path):
    keys = LocalKeyFileKeys(tmp_path / "audit.key")
    store = DirectoryStore(DirectorySink(path=str(tmp_path / "archive")))
    mine = AuditSpool(tmp_path / "spool", keys, app="t", batch_max_records=1, batch_max_s=60)
    neighbour = AuditSpool(tmp_path / "spool", keys, app="t", batch_max_records=1, batch_max_s=60)

    async def go():
        for i, spool in enumerate((mine, neighbour)):
            ctx = make_ctx(f"r-{i}")
            await spool.append(capture_request(ctx))

    run(go())
    uploader = Uploader(tmp_path / "spool", store, keys, own_chain=mine.chain)
    assert uploader.upload_once() == 1  # the neighbour is alive: its own uploader takes its chain
    neighbour.close()
    assert uploader.upload_once() == 1  # now it is a dead replica's chain
    old = 3600 * 24
    os.utime(neighbour.dir, (os.path.getatime(neighbour.dir) - old, os.path.getmtime(neighbour.dir) - old))
    uploader.upload_once()
    assert not neighbour.dir.exists() and mine.dir.exists()  # emptied dead directories go
    mine.close()
    report, records = walk(store, keys, *today())
    assert report.ok and sorted(r["request_id"] for r in records) == ["r-0", "r-1"]
