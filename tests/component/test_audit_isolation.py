"""One bad record never costs another request its record; only I/O failures fail records.

The writer commits records of many tenants in one batch. A record that cannot be encoded
(lone surrogates, nesting past the recursion limit, NaN, a non-string key, bytes) is stored
as a substitute with its raw bytes; a disk that refuses writes (a real file-size limit,
RLIMIT_FSIZE) fails exactly the records that did not reach disk, and the segment stays
consistent for the records after it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
from pathlib import Path

from serving.audit.crypto import LocalKeyFileKeys
from serving.audit.merge import merge_requests
from serving.audit.objectstore import DirectoryStore
from serving.audit.record import capture_begin, capture_end, capture_request
from serving.audit.spool import AuditSpool
from serving.audit.uploader import Uploader
from serving.audit.verify import walk
from serving.config import DirectorySink
from tests.component.test_audit_trail import SECRET, answered, make_ctx, today


def with_body(rid: str, raw: bytes, payload: dict, tenant: str = "bad-tenant"):
    ctx = make_ctx(rid, tenant=tenant)
    ctx.raw_body, ctx.payload = raw, payload
    return ctx


def deep(depth: int):
    value: object = "底"
    for _ in range(depth):
        value = [value]
    return value


def malformed() -> dict[str, tuple[str, str, bytes, dict]]:
    """request id -> (error class, the field it spoils, raw body as the client sent it, payload)."""
    surrogate = b'{"model":"m","messages":[{"role":"user","content":"\\ud800 ' + SECRET.encode() + b'"}]}'
    nan = b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":NaN}'
    nested = b'{"model":"m","messages":[{"role":"user","content":"x"}],"metadata":' + b"[" * 5000 \
        + '"底"'.encode() + b"]" * 5000 + b"}"
    return {
        "bad-surrogate": ("UnicodeEncodeError", "prompt", surrogate, json.loads(surrogate)),
        "bad-nan": ("ValueError", "parameters", nan, json.loads(nan)),
        "bad-deep": ("RecursionError", "parameters", nested,
                     {"model": "m", "messages": [], "metadata": deep(5000)}),
        "bad-keys": ("TypeError", "parameters", b'{"model":"m","logit_bias":{"1":5}}',
                     {"model": "m", "logit_bias": {1: 5, "2": 3}}),
        "bad-bytes": ("TypeError", "parameters", b'{"model":"m","user":"u"}',
                      {"model": "m", "user": b"\x00\xff"}),
    }


def test_malformed_records_become_substitutes_and_fail_no_one(tmp_path, caplog):
    keys = LocalKeyFileKeys(tmp_path / "audit.key")
    spool = AuditSpool(tmp_path / "spool", keys, app="t", batch_max_records=1000, batch_max_s=60)
    bad = malformed()
    good_a = [make_ctx(f"good-a-{i}", tenant="city-a") for i in range(3)]
    good_b = [make_ctx(f"good-b-{i}", tenant="city-b") for i in range(3)]
    bad_ctx = {rid: with_body(rid, raw, payload) for rid, (_, _, raw, payload) in bad.items()}
    # an engine's answer with an escaped lone surrogate: the end record cannot be JSON either
    answer_ctx = make_ctx("bad-answer", tenant="city-b")
    answer_ctx.response_chunks = [b'data: {"choices":[{"index":0,"delta":{"content":"\\udfff!"}}]}\n\n']
    answer_ctx.status = 200
    batch = []
    for good, wrong in zip(good_a + good_b, list(bad_ctx.values()) + [None], strict=True):
        batch += [capture_request(answered(good))]
        if wrong is not None:
            batch += [capture_begin(wrong), capture_end(wrong)]
    batch.append(capture_request(answer_ctx))

    async def go():
        return await asyncio.gather(*(spool.append(r) for r in batch), return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="govllm.audit"):
        outcomes = asyncio.run(go())
    spool.close()
    assert outcomes == [None] * len(batch)  # every request's record is durable
    assert SECRET not in caplog.text and "\\ud800" not in caplog.text
    store = DirectoryStore(DirectorySink(path=str(tmp_path / "archive")))
    Uploader(tmp_path / "spool", store, keys).upload_once()
    report, records = walk(store, keys, *today())
    assert report.status == "ok", report.as_dict()
    assert len(records) == len(batch)
    by_id: dict[str, list[dict]] = {}
    for r in records:
        by_id.setdefault(r["request_id"], []).append(r)
    for good in good_a + good_b:
        (r,) = by_id[good.request_id]
        assert "encoding_error" not in r and r["prompt"][0]["content"] == SECRET
        assert r["output"][0]["text"] == "回答です" and r["tenant"] == good.principal.tenant
    for rid, (error, spoiled, raw, _) in bad.items():
        begin, end = by_id[rid]
        assert begin["type"] == "begin" and begin["encoding_error"] == error, begin
        assert begin["dropped_fields"] == [spoiled] and spoiled not in begin
        assert base64.b64decode(begin["raw_body_b64"]) == raw  # the request, exactly
        assert (begin["tenant"], begin["user"], begin["client_request_id"], begin["confidentiality"]) == (
            "bad-tenant", "alice", f"client-{rid}", 2)
        assert end["type"] == "end" and "encoding_error" not in end  # its end is ordinary
    (answer,) = by_id["bad-answer"]
    assert answer["encoding_error"] == "UnicodeEncodeError" and "output" in answer["dropped_fields"]
    assert base64.b64decode(answer["response_b64"]) == answer_ctx.response_chunks[0]
    assert answer["prompt"][0]["content"] == SECRET  # what encodes is kept
    merged = {r["request_id"]: r for r in merge_requests(records)}
    assert merged["bad-nan"]["closed"] and merged["bad-nan"]["encoding_error"] == "ValueError"


DISK_LIMIT = 96 * 1024

LIMITED_WRITER = """
import asyncio, json, resource, signal, sys
from pathlib import Path
from serving.audit.crypto import LocalKeyFileKeys
from serving.audit.spool import AuditSpool
from tests.component.test_audit import record
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
keys = LocalKeyFileKeys(Path(sys.argv[2]))
spool = AuditSpool(Path(sys.argv[1]), keys, app="t", batch_max_records=1000, batch_max_s=600)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
pad = "記録" * 2000  # about 12 KB per record once encoded
async def batch(ids):
    outcomes = await asyncio.gather(*(spool.append(record(i, pad=pad)) for i in ids),
                                    return_exceptions=True)
    return {f"req-{i}": type(o).__name__ if o else "ok" for i, o in zip(ids, outcomes)}
results = {}
results.update(asyncio.run(batch(range(0, 4))))     # fits
results.update(asyncio.run(batch(range(4, 14))))    # does not: these fail
results.update(asyncio.run(batch(range(14, 16))))   # fits again after the rollback
spool.close()
print(json.dumps(results), flush=True)
"""


def test_a_write_failure_fails_only_what_is_not_on_disk(tmp_path):
    keys_path = tmp_path / "audit.key"
    LocalKeyFileKeys(keys_path)
    out = subprocess.run([sys.executable, "-c", LIMITED_WRITER, str(tmp_path / "spool"), str(keys_path),
                          str(DISK_LIMIT)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[2], check=True)
    results = json.loads(out.stdout)
    acknowledged = {rid for rid, outcome in results.items() if outcome == "ok"}
    failed = {rid: outcome for rid, outcome in results.items() if outcome != "ok"}
    assert {f"req-{i}" for i in (0, 1, 2, 3, 14, 15)} <= acknowledged
    assert failed and set(failed.values()) == {"OSError"}, results
    assert "File too large" in out.stderr and "記録" not in out.stderr  # the cause, never the content
    keys = LocalKeyFileKeys(keys_path, create=False)
    store = DirectoryStore(DirectorySink(path=str(tmp_path / "archive")))
    Uploader(tmp_path / "spool", store, keys).upload_once()
    report, records = walk(store, keys, *today())
    assert report.status == "ok", report.as_dict()  # the failed frames were cut off again
    assert {r["request_id"] for r in records} == acknowledged
    assert [r["seq"] for r in records] == list(range(len(acknowledged)))


def test_a_segment_that_could_not_be_sealed_is_sealed_later(tmp_path):
    """Sealing writes a sidecar; when that fails (here a directory stands where the sidecar
    goes, as real as a full disk), the records stay durable and the writer seals the segments
    in order as soon as it can, so the archive gets the chain without a hole."""
    import time

    keys = LocalKeyFileKeys(tmp_path / "audit.key")
    spool = AuditSpool(tmp_path / "spool", keys, app="t", batch_max_records=2, batch_max_s=600)
    store = DirectoryStore(DirectorySink(path=str(tmp_path / "archive")))
    uploader = Uploader(tmp_path / "spool", store, keys, own_chain=spool.chain)
    blocker = spool.dir / "0000000000.meta"
    blocker.mkdir()

    async def go(ids):
        for i in ids:
            await spool.append(capture_request(make_ctx(f"s-{i}")))

    asyncio.run(go(range(4)))  # all durable, though segment 0 cannot be sealed
    assert uploader.upload_once() == 0  # and segment 1 waits for it: the archive gets no hole
    blocker.rmdir()
    deadline = time.monotonic() + 10
    while not (spool.dir / "0000000000.sealed").exists():
        assert time.monotonic() < deadline, "the segment was never sealed"
        time.sleep(0.05)
    spool.close()
    uploader.upload_once()
    report, records = walk(store, keys, *today())
    assert report.status == "ok", report.as_dict()
    assert [r["request_id"] for r in records] == [f"s-{i}" for i in range(4)]
