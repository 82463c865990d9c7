"""Weights in object storage against a real S3/KMS-compatible server (moto_server on 127.0.0.1):
push (multipart, SSE-KMS, manifest last), verify, and pull (the chart's init step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.weights import MANIFEST, WeightsError, pull, push, verify
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
    name = f"weights-{request.node.name.replace('_', '-')[:40]}".lower()
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
