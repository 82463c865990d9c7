"""The audit sink's checksum setting against the real S3 server (moto_server on 127.0.0.1).

boto3 >= 1.36 sends CRC checksums by default, which several S3-compatible services reject
(boto/boto3 issue 4392): the sink's `checksums` decides, and what it decides is visible on the
server as a stored checksum (or none).
"""

from __future__ import annotations

import os

import pytest

from serving.audit.objectstore import S3Store
from serving.config import S3Sink
from tests.servers import AWS_ENV, start_moto


@pytest.fixture(scope="module")
def moto():
    for k, v in AWS_ENV.items():
        os.environ.setdefault(k, v)
    server = start_moto()
    server.client("s3").create_bucket(
        Bucket="audit-sums", CreateBucketConfiguration={"LocationConstraint": "ap-northeast-1"})
    yield server
    server.stop()


def _stored_checksum(moto, key: str) -> bool:
    head = moto.client("s3").head_object(Bucket="audit-sums", Key=key, ChecksumMode="ENABLED")
    return any(k.startswith("Checksum") and k != "ChecksumType" for k in head)


@pytest.mark.parametrize("mode,expect", [("when_supported", True), ("when_required", False),
                                         ("auto", False)])  # auto + endpoint URL: S3-compatible
def test_audit_sink_checksums(moto, mode, expect):
    store = S3Store(S3Sink(bucket="audit-sums", endpoint_url=moto.url, checksums=mode))
    key = f"audit/{mode}/0000000000.gvaudit"
    store.put(key, b"segment bytes" * 100, {"training-use": "prohibited"})
    assert store.get(key) == b"segment bytes" * 100
    assert _stored_checksum(moto, key) is expect


def test_sink_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="checksums"):
        S3Sink(bucket="b", checksums="always")
