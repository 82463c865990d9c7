"""Model weights in object storage: push a vendor's checkpoint, verify a copy, pull it onto a node.

`push` uploads every file of a checkpoint directory with multipart upload and SSE-KMS, then
writes `govllm-manifest.json` (model id, and per file: path, size, SHA-256) last, so a
manifest's presence means the upload finished. `verify` re-reads every object of the bucket
copy and compares it with the manifest (and, given the local directory, the manifest with the
vendor's files). `pull` is the chart's init step: it downloads into a node-local directory,
checking each file's SHA-256 before it is renamed into place, and skips files already there
with the right digest, so a restarted pod or a shared volume does not download twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MANIFEST = "govllm-manifest.json"
CHUNK = 8 * 2**20


class WeightsError(RuntimeError):
    """A push, verify or pull that cannot go on; the message says what to fix."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ends with "/"

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise WeightsError(f"{uri!r} is not an s3://bucket/prefix URI")
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(parts.netloc, prefix)

    def key(self, relative: str) -> str:
        return self.prefix + relative


@dataclass
class Report:
    """Outcome of a verify or pull: `problems` empty means the copy matches the manifest."""

    model: str
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_files(root: Path) -> Iterator[Path]:
    """Regular files under `root` in a stable order (the manifest's order)."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            yield path


def build_manifest(model: str, root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise WeightsError(f"{root} is not a directory")
    files = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size,
              "sha256": sha256_file(p)} for p in local_files(root)]
    if not files:
        raise WeightsError(f"{root} holds no files")
    return {"model": model, "algorithm": "sha256", "created": datetime.now(UTC).isoformat(),
            "files": files}


def s3_client(*, endpoint_url: str | None = None, region: str | None = None):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region)


def push(s3, model: str, source: Path, dest: str, *, kms_key_id: str,
         part_size: int = 64 * 2**20) -> dict[str, Any]:
    """Upload `source` to `dest` (multipart, SSE-KMS) and write the manifest last."""
    from boto3.s3.transfer import TransferConfig

    loc = S3Location.parse(dest)
    manifest = build_manifest(model, source)
    config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                            max_concurrency=4)
    sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
    for entry in manifest["files"]:
        s3.upload_file(str(source / entry["path"]), loc.bucket, loc.key(entry["path"]),
                       ExtraArgs={**sse, "Metadata": {"sha256": entry["sha256"]}}, Config=config)
    s3.put_object(Bucket=loc.bucket, Key=loc.key(MANIFEST), ContentType="application/json",
                  Body=json.dumps(manifest, indent=1).encode(), **sse)
    return manifest


def read_manifest(s3, loc: S3Location, model: str) -> dict[str, Any]:
    try:
        body = s3.get_object(Bucket=loc.bucket, Key=loc.key(MANIFEST))["Body"].read()
    except s3.exceptions.NoSuchKey:
        raise WeightsError(f"s3://{loc.bucket}/{loc.key(MANIFEST)} is missing: the upload did not "
                           "finish or was not made with `govllm weights push`") from None
    manifest = json.loads(body)
    if manifest.get("model") != model:
        raise WeightsError(f"s3://{loc.bucket}/{loc.prefix} holds model {manifest.get('model')!r}, "
                           f"not {model!r}: check --model and the URI")
    return manifest


def _stream_sha256(s3, bucket: str, key: str) -> tuple[str, int]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def verify(s3, model: str, dest: str, *, local: Path | None = None) -> Report:
    """Check every object of the bucket copy (size, SHA-256, SSE-KMS) against the manifest."""
    loc = S3Location.parse(dest)
    manifest = read_manifest(s3, loc, model)
    report = Report(model=model)
    listed = {entry["path"] for entry in manifest["files"]}
    for entry in manifest["files"]:
        key = loc.key(entry["path"])
        try:
            head = s3.head_object(Bucket=loc.bucket, Key=key)
        except s3.exceptions.ClientError:
            report.problems.append(f"{entry['path']}: missing in the bucket")
            continue
        if head.get("ServerSideEncryption") != "aws:kms":
            report.problems.append(f"{entry['path']}: not encrypted with SSE-KMS")
        digest, size = _stream_sha256(s3, loc.bucket, key)
        if size != entry["size"] or digest != entry["sha256"]:
            report.problems.append(f"{entry['path']}: SHA-256 {digest[:12]}… ({size} bytes) "
                                   f"differs from the manifest's {entry['sha256'][:12]}… "
                                   f"({entry['size']} bytes)")
        report.files += 1
        report.bytes += size
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(loc.prefix):]
            if rel != MANIFEST and rel not in listed:
                report.problems.append(f"{rel}: in the bucket but not in the manifest")
    if local is not None:
        for entry in manifest["files"]:
            path = local / entry["path"]
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                report.problems.append(f"{entry['path']}: the local file differs from the manifest")
        extra = {p.relative_to(local).as_posix() for p in local_files(local)} - listed
        report.problems.extend(f"{rel}: local file not in the manifest" for rel in sorted(extra))
    return report


def pull(s3, model: str, source: str, dest: Path) -> Report:
    """Download into `dest`, verifying each file before it is renamed into place."""
    loc = S3Location.parse(source)
    manifest = read_manifest(s3, loc, model)
    report = Report(model=model)
    for entry in manifest["files"]:
        target = dest / entry["path"]
        if not target.resolve().is_relative_to(dest.resolve()):
            raise WeightsError(f"manifest path {entry['path']!r} escapes {dest}")
        report.files += 1
        report.bytes += entry["size"]
        if (target.is_file() and target.stat().st_size == entry["size"]
                and sha256_file(target) == entry["sha256"]):
            report.skipped += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        s3.download_file(loc.bucket, loc.key(entry["path"]), str(partial))
        digest = sha256_file(partial)
        if digest != entry["sha256"]:
            partial.unlink()
            report.problems.append(f"{entry['path']}: downloaded SHA-256 {digest[:12]}… differs "
                                   f"from the manifest's {entry['sha256'][:12]}…")
            continue
        os.replace(partial, target)
    if report.ok:
        (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return report
