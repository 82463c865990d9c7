"""The audit trail end to end: spool -> object store (real S3/KMS server) -> verify."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from serving.audit import segment
from serving.audit.crypto import KmsKeys, LocalKeyFileKeys
from serving.audit.objectstore import TOKYO, DirectoryStore, S3Store
from serving.audit.record import assemble_stream
from serving.audit.spool import AuditSpool, recover_abandoned
from serving.audit.uploader import Uploader
from serving.audit.verify import walk
from serving.config import DirectorySink, KmsKey, S3Sink
from tests.servers import AWS_ENV, paused, start_moto

SECRET = "機密性2: 住民Aの個人番号は1234-5678です"


@pytest.fixture(scope="module")
def moto():
    """Two servers: the object store (S3) and the key service (KMS) fail independently."""
    for k, v in AWS_ENV.items():
        os.environ.setdefault(k, v)
    s3, kms = start_moto(), start_moto()
    yield {"s3": s3, "kms": kms}
    s3.stop()
    kms.stop()


def record(i: int, **extra) -> dict:
    return {
        "type": "request", "operation": "chat", "request_id": f"req-{i}", "time": time.time(), "tenant": "city",
        "user": "u", "model_id": "m", "prompt": [{"role": "user", "content": f"{SECRET} #{i}"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3}, "training_use": "prohibited",
        "_response": (None, b'{"choices":[{"index":0,"message":{"content":"answer %d"}}]}' % i),
        **extra,
    }


def write(spool: AuditSpool, n: int, start: int = 0) -> None:
    async def go():
        await asyncio.gather(*(spool.append(record(i)) for i in range(start, start + n)))

    asyncio.run(go())


def today_range():
    now = datetime.now(TOKYO)
    return now - timedelta(hours=1), now + timedelta(hours=1)


@pytest.fixture
def local(tmp_path):
    keys = LocalKeyFileKeys(tmp_path / "audit.key")
    store = DirectoryStore(DirectorySink(path=str(tmp_path / "archive")))
    return keys, store, tmp_path / "spool"


def test_records_are_encrypted_chained_and_verifiable(local):
    keys, store, spool_dir = local
    spool = AuditSpool(spool_dir, keys, app="t", batch_max_records=7, batch_max_s=60)
    write(spool, 20)
    spool.close()
    uploader = Uploader(spool_dir, store, keys)
    assert uploader.upload_once() == 3  # 7 + 7 + 6
    for path in Path(store.root).rglob("*.gvaudit"):
        data = path.read_bytes()
        assert SECRET.encode() not in data and b"answer" not in data and b"req-" not in data
    report, records = walk(store, keys, *today_range())
    assert report.ok, report.as_dict()
    assert report.records == 20 and len(report.chains) == 1
    assert [r["seq"] for r in records] == list(range(20))
    assert records[3]["prompt"][0]["content"] == f"{SECRET} #3"
    assert records[3]["output"] == [{"index": 0, "text": "answer 3", "reasoning": None, "tool_calls": None,
                                     "finish_reason": None}]
    assert all(r["training_use"] == "prohibited" for r in records)
    assert records[0]["prev_digest"] == segment.GENESIS


def tamper(store: DirectoryStore, index: int, *, delete: bool = False, flip_at: int = -5) -> Path:
    path = sorted(Path(store.root).rglob("*.gvaudit"))[index]
    if delete:
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[flip_at] ^= 0x01
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how, kind", [("flip", "tampered"), ("delete", "gap")])
def test_tampering_and_deletion_are_detected(local, how, kind):
    keys, store, spool_dir = local
    spool = AuditSpool(spool_dir, keys, app="t", batch_max_records=5, batch_max_s=60)
    write(spool, 15)
    spool.close()
    Uploader(spool_dir, store, keys).upload_once()
    tamper(store, 1, delete=(how == "delete"))
    report, _ = walk(store, keys, *today_range())
    assert not report.ok
    assert kind in {p.kind for p in report.problems}, report.as_dict()


def test_deleted_tail_is_detected_by_the_manifest_and_by_chain_heads(local):
    keys, store, spool_dir = local
    spool = AuditSpool(spool_dir, keys, app="t", batch_max_records=5, batch_max_s=60)
    write(spool, 10)
    spool.close()
    heads = {}
    Uploader(spool_dir, store, keys, on_uploaded=lambda chain, meta: heads.update({chain: {**meta, "time": time.time()}})).upload_once()
    assert walk(store, keys, *today_range(), heads=heads)[0].ok
    tamper(store, -1, delete=True)
    report, _ = walk(store, keys, *today_range())
    assert [(p.kind, p.detail) for p in report.problems] == [("gap", "segment 1 missing (the chain's last)")]
    for manifest in Path(store.root).rglob("chains/*.json"):
        manifest.unlink()  # and the manifest with it: the heads still know
    report, _ = walk(store, keys, *today_range(), heads=heads)
    assert [p.kind for p in report.problems] == ["missing_manifest", "missing_tail"], report.as_dict()
    assert "the archive ends at record 4" in report.problems[1].detail


CRASHING_WRITER = """
import asyncio, sys, time
from pathlib import Path
from serving.audit.crypto import LocalKeyFileKeys
from serving.audit.spool import AuditSpool
from tests.component.test_audit import record
spool = AuditSpool(Path(sys.argv[1]), LocalKeyFileKeys(Path(sys.argv[2])), app="t",
                   batch_max_records=100, batch_max_s=600)
async def go():
    await asyncio.gather(*(spool.append(record(i)) for i in range(4)))
asyncio.run(go())
print("durable", flush=True)
time.sleep(600)
"""


def test_crashed_writer_segment_is_recovered_without_the_torn_frame(local, tmp_path):
    keys, store, spool_dir = local
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(spool_dir), str(keys.path)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert proc.stdout.readline().strip() == "durable"
    proc.send_signal(signal.SIGKILL)  # the replica dies: no seal, no cleanup
    proc.wait()
    open_path = next(spool_dir.glob("*/*.open"))
    with open(open_path, "ab") as f:  # and it died in the middle of a write
        f.write(b"\x00\x00\x01\x00partial")
    assert recover_abandoned(spool_dir) == 1
    Uploader(spool_dir, store, keys).upload_once()
    report, records = walk(store, keys, *today_range())
    assert report.ok and [r["request_id"] for r in records] == [f"req-{i}" for i in range(4)]


def test_s3_with_kms_and_an_outage_loses_nothing(moto, tmp_path):
    s3, kms = moto["s3"].client("s3"), moto["kms"].client("kms")
    s3.create_bucket(Bucket="audit-jp", CreateBucketConfiguration={"LocationConstraint": "ap-northeast-1"})
    key_id = kms.create_key(Description="govllm audit")["KeyMetadata"]["KeyId"]
    kms_settings = KmsKey(key_id=key_id, endpoint_url=moto["kms"].url)
    keys = KmsKeys(kms_settings)
    store = S3Store(S3Sink(bucket="audit-jp", endpoint_url=moto["s3"].url, sse_kms_key_id=key_id))
    spool_dir = tmp_path / "spool"
    spool = AuditSpool(spool_dir, keys, app="t", batch_max_records=10, batch_max_s=0.5)
    uploader = Uploader(spool_dir, store, keys, own_chain=spool.chain, interval_s=0.2).start()
    write(spool, 10)
    time.sleep(1.5)
    with paused(moto["s3"].proc.pid):  # the object store hangs: requests keep being recorded
        write(spool, 25, start=10)
        time.sleep(1.0)
        assert uploader.pending() >= 25
    deadline = time.monotonic() + 60
    while uploader.pending() and time.monotonic() < deadline:
        time.sleep(0.5)
    spool.close()
    uploader.stop(flush=True)
    objects = s3.list_objects_v2(Bucket="audit-jp")["Contents"]
    head = s3.head_object(Bucket="audit-jp", Key=objects[0]["Key"])
    assert head["ServerSideEncryption"] == "aws:kms" and head["Metadata"]["training-use"] == "prohibited"
    for obj in objects:
        body = s3.get_object(Bucket="audit-jp", Key=obj["Key"])["Body"].read()
        assert SECRET.encode() not in body
    report, records = walk(store, keys, *today_range())
    assert report.ok, report.as_dict()
    assert sorted(r["request_id"] for r in records) == sorted(f"req-{i}" for i in range(35))
    # the chain's manifest is stored beside the segments, encrypted, and guards both ends
    (manifest,) = [o["Key"] for o in objects if o["Key"].startswith("audit/chains/")]
    assert s3.head_object(Bucket="audit-jp", Key=manifest)["ServerSideEncryption"] == "aws:kms"
    first = sorted(o["Key"] for o in objects if o["Key"].endswith(".gvaudit"))[0]
    s3.delete_object(Bucket="audit-jp", Key=first)
    report, _ = walk(store, keys, *today_range())
    assert [p.detail for p in report.problems] == ["segment 0 missing (the chain's first)"]
    s3.delete_object(Bucket="audit-jp", Key=manifest)
    report, _ = walk(store, keys, *today_range())
    assert sorted(p.kind for p in report.problems) == ["gap", "missing_manifest"], report.as_dict()


def test_key_service_outage_keeps_the_segment_open(moto, tmp_path):
    kms = moto["kms"].client("kms")
    key_id = kms.create_key(Description="govllm audit")["KeyMetadata"]["KeyId"]
    keys = KmsKeys(KmsKey(key_id=key_id, endpoint_url=moto["kms"].url))
    spool = AuditSpool(tmp_path / "spool", keys, app="t", batch_max_records=5, batch_max_s=60)
    write(spool, 3)
    with paused(moto["kms"].proc.pid):
        started = time.monotonic()
        write(spool, 10, start=3)  # past the segment limit: no new key, the segment grows
        assert time.monotonic() - started < 60
    write(spool, 1, start=13)
    spool.close()
    store = DirectoryStore(DirectorySink(path=str(tmp_path / "archive")))
    Uploader(tmp_path / "spool", store, keys).upload_once()
    report, records = walk(store, keys, *today_range())
    assert report.ok and len(records) == 14


def test_stream_assembly():
    raw = (
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"\xe4\xbc\x9a"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"\xe8\xad\xb0"},"finish_reason":"length"}]}\n\n'
    )
    assert assemble_stream(raw, "chat") == ([{"index": 0, "text": "会議", "reasoning": None, "tool_calls": None,
                                              "finish_reason": "length"}], [])
