"""Weights in object storage against a real S3/KMS-compatible server (moto_server on 127.0.0.1):
push (multipart, SSE-KMS, manifest last), verify, and pull (the chart's init step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.ops.weights import MANIFEST, WeightsError, build_manifest, pull, push, verify
from tests.servers import AWS_ENV, start_moto

MIB = 2**20


@pytest.fixture(scope="module")
def moto():
    for k, v in AWS_ENV.items():
        os.environ.setdefault(k, v)
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto, request):
    s3 = moto.client("s3")
    import re
    import zlib

    slug = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:30]
    name = f"weights-{zlib.crc32(request.node.name.encode()):08x}-{slug}".strip("-")
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "ap-northeast-1"})
    key = moto.client("kms").create_key(Description="weights")["KeyMetadata"]["Arn"]
    return s3, name, key


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    root = tmp_path / "vendor"
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    # 11 MiB: three parts at the 5 MiB minimum part size
    (root / "model-00001-of-00001.safetensors").write_bytes(os.urandom(11 * MIB))
    return root


def test_push_is_multipart_sse_kms_with_manifest(bucket, checkpoint):
    s3, name, key = bucket
    manifest = push(s3, "elyza-jp-8b", checkpoint, f"s3://{name}/elyza/8b/", kms_key_id=key,
                    part_size=5 * MIB)
    assert [f["path"] for f in manifest["files"]] == [
        "config.json", "model-00001-of-00001.safetensors", "tokenizer/tokenizer.json"]
    head = s3.head_object(Bucket=name, Key="elyza/8b/model-00001-of-00001.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # multipart, 3 parts
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith(key.split("/")[-1])
    stored = json.loads(s3.get_object(Bucket=name, Key=f"elyza/8b/{MANIFEST}")["Body"].read())
    assert stored["model"] == "elyza-jp-8b" and stored["files"] == manifest["files"]
    report = verify(s3, "elyza-jp-8b", f"s3://{name}/elyza/8b/", local=checkpoint)
    assert report.ok, report.problems
    assert report.files == 3 and report.bytes == 11 * MIB + 2 + len('{"model_type": "llama"}')


def test_verify_finds_tampering_missing_and_extra_objects(bucket, checkpoint):
    s3, name, key = bucket
    dest = f"s3://{name}/m/"
    push(s3, "m", checkpoint, dest, kms_key_id=key, part_size=5 * MIB)
    s3.put_object(Bucket=name, Key="m/config.json", Body=b'{"model_type": "evil"}',
                  ServerSideEncryption="aws:kms", SSEKMSKeyId=key)
    s3.delete_object(Bucket=name, Key="m/tokenizer/tokenizer.json")
    s3.put_object(Bucket=name, Key="m/extra.bin", Body=b"x")
    problems = verify(s3, "m", dest).problems
    assert any(p.startswith("config.json: SHA-256") for p in problems), problems
    assert "tokenizer/tokenizer.json: missing in the bucket" in problems
    assert "extra.bin: in the bucket but not in the manifest" in problems
    (checkpoint / "config.json").write_text("changed locally")
    local = verify(s3, "m", dest, local=checkpoint).problems
    assert "config.json: the local file differs from the manifest" in local


def test_verify_refuses_the_wrong_model_and_a_missing_manifest(bucket, checkpoint):
    s3, name, key = bucket
    push(s3, "a", checkpoint, f"s3://{name}/a/", kms_key_id=key, part_size=5 * MIB)
    with pytest.raises(WeightsError, match="holds model 'a', not 'b'"):
        verify(s3, "b", f"s3://{name}/a/")
    with pytest.raises(WeightsError, match="is missing"):
        verify(s3, "a", f"s3://{name}/nothing-here/")


def test_unencrypted_copy_is_reported(bucket, checkpoint):
    s3, name, key = bucket
    push(s3, "m", checkpoint, f"s3://{name}/m/", kms_key_id=key, part_size=5 * MIB)
    s3.put_object(Bucket=name, Key="m/config.json", Body=(checkpoint / "config.json").read_bytes())
    assert verify(s3, "m", f"s3://{name}/m/").problems == ["config.json: not encrypted with SSE-KMS"]


def test_pull_verifies_and_skips_what_is_already_there(bucket, checkpoint, tmp_path):
    s3, name, key = bucket
    push(s3, "m", checkpoint, f"s3://{name}/m/", kms_key_id=key, part_size=5 * MIB)
    dest = tmp_path / "node" / "m"
    first = pull(s3, "m", f"s3://{name}/m/", dest)
    assert first.ok and first.files == 3 and first.skipped == 0
    assert (dest / "model-00001-of-00001.safetensors").read_bytes() == (
        checkpoint / "model-00001-of-00001.safetensors").read_bytes()
    assert (dest / MANIFEST).is_file()
    again = pull(s3, "m", f"s3://{name}/m/", dest)
    assert again.ok and again.skipped == 3
    # a corrupted object in the bucket is refused and never renamed into place
    s3.put_object(Bucket=name, Key="m/config.json", Body=b"corrupt",
                  ServerSideEncryption="aws:kms", SSEKMSKeyId=key)
    (dest / "config.json").unlink()
    bad = pull(s3, "m", f"s3://{name}/m/", dest)
    assert not bad.ok and bad.problems[0].startswith("config.json: downloaded SHA-256")
    assert not (dest / "config.json").exists() and not list(dest.glob("*.partial"))


def test_cli_push_verify_pull(moto, bucket, checkpoint, tmp_path):
    """The commands as an operator and the init container run them, over HTTP to the server."""
    _, name, key = bucket
    env = {**os.environ, **AWS_ENV, "AWS_ENDPOINT_URL_S3": moto.url}
    govllm = [str(Path(sys.executable).parent / "govllm")]
    run = lambda *a: subprocess.run([*govllm, "weights", *a], capture_output=True, text=True,  # noqa: E731
                                    env=env, timeout=120)
    uri = f"s3://{name}/cli/"
    pushed = run("push", "--model", "m", "--from", str(checkpoint), "--to", uri,
                 "--kms-key-id", key, "--part-size-mib", "5")
    assert pushed.returncode == 0, pushed.stderr
    verified = run("verify", "--model", "m", "--to", uri, "--from", str(checkpoint))
    assert verified.returncode == 0 and "verify ok: 3 files" in verified.stdout, verified.stderr
    pulled = run("pull", "--model", "m", "--from", uri, "--to", str(tmp_path / "staged"))
    assert pulled.returncode == 0 and "pull ok" in pulled.stdout, pulled.stderr
    wrong = run("verify", "--model", "other", "--to", uri)
    assert wrong.returncode == 1 and "not 'other'" in wrong.stderr


class Recorder:
    """A ProgressSink that keeps what it was told (thread-safe enough for += under the GIL)."""

    def __init__(self):
        self.total: int | None = None
        self.done = 0

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, n: int = 1) -> None:
        self.done += n


def test_push_reads_each_file_once_and_reports_progress(bucket, checkpoint, monkeypatch):
    s3, name, key = bucket
    opened: list[str] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        if self.is_relative_to(checkpoint):
            opened.append(self.relative_to(checkpoint).as_posix())
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    progress = Recorder()
    manifest = push(s3, "m", checkpoint, f"s3://{name}/once/", kms_key_id=key, part_size=5 * MIB,
                    workers=3, progress=progress)
    monkeypatch.undo()
    assert sorted(opened) == sorted(f["path"] for f in manifest["files"])  # one open per file
    assert manifest["files"] == build_manifest("m", checkpoint)["files"]  # digests of the real bytes
    assert progress.total == progress.done == sum(f["size"] for f in manifest["files"])
    checked = Recorder()
    assert verify(s3, "m", f"s3://{name}/once/", local=checkpoint, workers=3, progress=checked).ok
    assert checked.total == checked.done == 2 * progress.total  # bucket copy + local files


def test_pull_skips_files_its_manifest_records_without_reading_them(bucket, checkpoint, tmp_path):
    s3, name, key = bucket
    push(s3, "m", checkpoint, f"s3://{name}/m/", kms_key_id=key, part_size=5 * MIB)
    dest = tmp_path / "node"
    assert pull(s3, "m", f"s3://{name}/m/", dest, workers=3).ok
    recorded = json.loads((dest / MANIFEST).read_text())["local"]
    assert set(recorded) == {"config.json", "model-00001-of-00001.safetensors",
                             "tokenizer/tokenizer.json"}
    # Same size and mtime as recorded: kept without reading. Proof that it was not read: a
    # same-size change with the old mtime restored goes unnoticed (the documented quick check) ...
    weights = dest / "model-00001-of-00001.safetensors"
    stat = weights.stat()
    weights.write_bytes(os.urandom(stat.st_size))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    progress = Recorder()
    quick = pull(s3, "m", f"s3://{name}/m/", dest, progress=progress)
    assert quick.ok and quick.skipped == 3 and quick.rehashed == 0
    assert progress.done == progress.total
    # ... and --rehash reads it, finds the difference and downloads the file again.
    full = pull(s3, "m", f"s3://{name}/m/", dest, rehash=True)
    assert full.ok and full.skipped == 2 and full.rehashed == 2
    assert weights.read_bytes() == (checkpoint / weights.name).read_bytes()
    # A file whose mtime changed is read again (kept: its bytes still match).
    os.utime(dest / "config.json", ns=(0, 10**9))
    touched = pull(s3, "m", f"s3://{name}/m/", dest)
    assert touched.ok and touched.skipped == 3 and touched.rehashed == 1


@pytest.mark.parametrize("mode,expect_checksum", [("when_supported", True), ("when_required", False)])
def test_checksum_setting_reaches_the_server(moto, bucket, checkpoint, mode, expect_checksum):
    """boto3 >= 1.36 sends CRC checksums unless told "when_required" (S3-compatible stores)."""
    from cluster.ops.weights import s3_client

    _, name, key = bucket
    s3 = s3_client(endpoint_url=moto.url, region="ap-northeast-1", checksums=mode)
    push(s3, "m", checkpoint, f"s3://{name}/{mode}/", kms_key_id=key, part_size=5 * MIB)
    for rel in ("config.json", "model-00001-of-00001.safetensors"):
        head = s3.head_object(Bucket=name, Key=f"{mode}/{rel}", ChecksumMode="ENABLED")
        sent = any(k.startswith("Checksum") and k != "ChecksumType" for k in head)
        assert sent is expect_checksum, (rel, head)
    assert verify(s3, "m", f"s3://{name}/{mode}/").ok


def test_auto_checksums_follow_the_endpoint(monkeypatch):
    from serving.s3checksums import resolve

    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    assert resolve("auto", None) == "when_supported"  # AWS itself
    assert resolve("auto", "https://s3.isk01.sakurastorage.jp") == "when_required"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://storage.googleapis.com")
    assert resolve("auto", None) == "when_required"
    assert resolve("when_supported", "https://x") == "when_supported"
    with pytest.raises(ValueError, match="checksums must be one of"):
        resolve("always", None)  # type: ignore[arg-type]
