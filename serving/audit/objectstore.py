"""Where sealed audit segments go: S3 (production) or a local directory (embedded default).

Object keys: <prefix>/<YYYY>/<MM>/<DD>/<chain>/<segment>.gvaudit, dated in
Asia/Tokyo by the segment's creation, so an auditor's day maps to a prefix;
each chain's manifest (its head, see manifest.py) is <prefix>/chains/<chain>.json.
S3 objects are written with SSE-KMS on top of the records' own envelope
encryption, in the configured (Japanese) region.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from serving.config import DirectorySink, KmsKey, S3Sink

TOKYO = ZoneInfo("Asia/Tokyo")
SUFFIX = ".gvaudit"


def segment_day(created: float) -> str:
    """The day (Asia/Tokyo, "YYYY/MM/DD") under which a segment created then is stored."""
    return datetime.fromtimestamp(created, TOKYO).strftime("%Y/%m/%d")


def object_key(prefix: str, created: float, chain: str, segment_no: int) -> str:
    return day_key(prefix, segment_day(created), chain, segment_no)


def day_key(prefix: str, day: str, chain: str, segment_no: int) -> str:
    """The key of a segment stored under `day` ("YYYY/MM/DD")."""
    return f"{prefix.strip('/')}/{day}/{chain}/{segment_no:010d}{SUFFIX}"


def parse_key(key: str) -> tuple[str, str, int] | None:
    """(day "YYYY/MM/DD", chain, segment number) of a segment key; None for anything else."""
    parts = key.rsplit("/", 5)
    if len(parts) != 6 or not parts[5].endswith(SUFFIX):
        return None
    try:
        return "/".join(parts[1:4]), parts[4], int(parts[5][: -len(SUFFIX)])
    except ValueError:
        return None


class ObjectStore(Protocol):
    prefix: str

    def put(self, key: str, data: bytes, metadata: dict[str, str]) -> None: ...
    def get(self, key: str) -> bytes: ...
    def get_if_exists(self, key: str) -> bytes | None: ...
    def list(self, prefix: str) -> Iterator[str]: ...


class DirectoryStore:
    def __init__(self, sink: DirectorySink):
        self.root = Path(sink.path)
        self.prefix = "audit"

    def put(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def get_if_exists(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix
        if not base.exists():
            return iter(())
        return iter(sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                           if p.is_file() and p.suffix != ".tmp"))


class S3Store:
    def __init__(self, sink: S3Sink, kms: KmsKey | None = None):
        import boto3
        from botocore.config import Config

        from serving.s3checksums import client_config

        # Short timeouts: a hung store must not block the uploader thread for minutes;
        # the uploader retries on its own schedule. A pool for `govllm audit verify`'s
        # parallel reads (serving/audit/fetch.py).
        self._s3 = boto3.client(
            "s3", region_name=sink.region, endpoint_url=sink.endpoint_url,
            config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2},
                          max_pool_connections=32,
                          **client_config(sink.checksums, sink.endpoint_url)),
        )
        self.bucket = sink.bucket
        self.prefix = sink.prefix
        self._sse_key = sink.sse_kms_key_id or (kms.key_id if kms else None)

    def put(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        extra = {"ServerSideEncryption": "aws:kms"}
        if self._sse_key:
            extra["SSEKMSKeyId"] = self._sse_key
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata, **extra)

    def get(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_if_exists(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.get(key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]


def object_store(sink: S3Sink | DirectorySink, keys: object = None) -> ObjectStore:
    if isinstance(sink, S3Sink):
        return S3Store(sink, keys if isinstance(keys, KmsKey) else None)
    return DirectoryStore(sink)
