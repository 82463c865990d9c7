"""Model weights in object storage: push a vendor's checkpoint, verify a copy, pull it onto a node.

`push` uploads every file of a checkpoint directory with multipart upload and SSE-KMS, hashing
each file while it is read for the upload (each file is read once), then writes
`govllm-manifest.json` (model id, and per file: path, size, SHA-256) last, so a manifest's
presence means the upload finished. `verify` re-reads every object of the bucket copy and
compares it with the manifest (and, given the local directory, the manifest with the vendor's
files). `pull` is the chart's init step: it downloads into a node-local directory, checking each
file's SHA-256 before it is renamed into place. A pull that succeeded leaves the manifest in the
directory with each file's size and modification time, so a restarted pod skips files that still
match it without reading them again; files not covered by it are hashed and kept if they match.

Files move in parallel (`workers` at a time, each multipart transfer with a few threads of its
own); memory stays bounded by workers x parts in flight x part size. Long runs report to a
`ProgressSink` (serving/progress.py; shown by govllm/progress.py: a bar in a terminal, periodic lines in a pod log).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from serving.s3checksums import ChecksumMode, client_config

if TYPE_CHECKING:
    from serving.progress import ProgressSink

MANIFEST = "govllm-manifest.json"
CHUNK = 8 * 2**20
DEFAULT_WORKERS = 4
#: Threads and buffered parts per file transfer: the memory bound is workers x this x part size.
PER_FILE_CONCURRENCY = 2


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
    """Outcome of a verify or pull: `problems` empty means the copy matches the manifest.

    `skipped`: files a pull found in place; `rehashed`: how many of those it had to read
    (not covered by the manifest of an earlier pull).
    """

    model: str
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    skipped: int = 0
    rehashed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class _Quiet:
    def start(self, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


def sha256_file(path: Path, progress: ProgressSink | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress.advance(len(chunk))
    return digest.hexdigest()


def local_files(root: Path) -> Iterator[Path]:
    """Regular files under `root` in a stable order (the manifest's order)."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            yield path


def build_manifest(model: str, root: Path) -> dict[str, Any]:
    """A manifest from local files (hashing each); `push` builds the same while uploading."""
    if not root.is_dir():
        raise WeightsError(f"{root} is not a directory")
    files = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size,
              "sha256": sha256_file(p)} for p in local_files(root)]
    if not files:
        raise WeightsError(f"{root} holds no files")
    return _manifest(model, files)


def _manifest(model: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": model, "algorithm": "sha256", "created": datetime.now(UTC).isoformat(),
            "files": files}


def s3_client(*, endpoint_url: str | None = None, region: str | None = None,
              checksums: ChecksumMode = "auto", workers: int = DEFAULT_WORKERS):
    """An S3 client sized for `workers` parallel transfers, with the sink's checksum behaviour."""
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=max(10, workers * (PER_FILE_CONCURRENCY + 1)),
                    **client_config(checksums, endpoint_url))
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _transfer_config(part_size: int):
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                            max_concurrency=PER_FILE_CONCURRENCY)
    # s3transfer's bound on parts read ahead from a stream (default 10): keeps memory at
    # about PER_FILE_CONCURRENCY + 1 parts per file.
    config.max_in_memory_upload_chunks = PER_FILE_CONCURRENCY + 1
    return config


class _HashingReader:
    """A file read once, front to back, hashed on the way to the upload.

    It declares itself not seekable, so s3transfer reads it sequentially in part-size
    pieces (its non-seekable path) instead of seeking to parts in parallel threads.
    """

    def __init__(self, f):
        self._f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def seekable(self) -> bool:
        return False


def _parallel(workers: int, fn, items: list) -> list:
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="govllm-weights") as pool:
        return list(pool.map(fn, items))


def push(s3, model: str, source: Path, dest: str, *, kms_key_id: str,
         part_size: int = 64 * 2**20, workers: int = DEFAULT_WORKERS,
         progress: ProgressSink | None = None) -> dict[str, Any]:
    """Upload `source` to `dest` (multipart, SSE-KMS), hashing as it reads, manifest last."""
    loc = S3Location.parse(dest)
    if not source.is_dir():
        raise WeightsError(f"{source} is not a directory")
    paths = list(local_files(source))
    if not paths:
        raise WeightsError(f"{source} holds no files")
    progress = progress or _Quiet()
    progress.start(sum(p.stat().st_size for p in paths))
    config = _transfer_config(part_size)
    sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}

    def upload(path: Path) -> dict[str, Any]:
        rel = path.relative_to(source).as_posix()
        size = path.stat().st_size
        with path.open("rb") as f:
            reader = _HashingReader(f)
            s3.upload_fileobj(reader, loc.bucket, loc.key(rel), ExtraArgs=sse, Config=config,
                              Callback=progress.advance)
        if reader.size != size:
            raise WeightsError(f"{path} changed size while it was uploaded ({size} -> "
                               f"{reader.size} bytes): push again once the checkpoint is complete")
        return {"path": rel, "size": size, "sha256": reader.digest.hexdigest()}

    manifest = _manifest(model, _parallel(workers, upload, paths))
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


def _stream_sha256(s3, bucket: str, key: str, progress: ProgressSink) -> tuple[str, int]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
        progress.advance(len(chunk))
    return digest.hexdigest(), size


def verify(s3, model: str, dest: str, *, local: Path | None = None,
           workers: int = DEFAULT_WORKERS, progress: ProgressSink | None = None) -> Report:
    """Check every object of the bucket copy (size, SHA-256, SSE-KMS) against the manifest."""
    loc = S3Location.parse(dest)
    manifest = read_manifest(s3, loc, model)
    progress = progress or _Quiet()
    entries = manifest["files"]
    progress.start(sum(e["size"] for e in entries) * (2 if local is not None else 1))
    report = Report(model=model)
    listed = {entry["path"] for entry in entries}

    def check(entry: dict[str, Any]) -> tuple[list[str], int]:
        key = loc.key(entry["path"])
        try:
            head = s3.head_object(Bucket=loc.bucket, Key=key)
        except s3.exceptions.ClientError:
            progress.advance(entry["size"])
            return [f"{entry['path']}: missing in the bucket"], -1
        problems = []
        if head.get("ServerSideEncryption") != "aws:kms":
            problems.append(f"{entry['path']}: not encrypted with SSE-KMS")
        digest, size = _stream_sha256(s3, loc.bucket, key, progress)
        if size != entry["size"] or digest != entry["sha256"]:
            problems.append(f"{entry['path']}: SHA-256 {digest[:12]}… ({size} bytes) "
                            f"differs from the manifest's {entry['sha256'][:12]}… "
                            f"({entry['size']} bytes)")
        return problems, size

    for problems, size in _parallel(workers, check, entries):  # results in manifest order
        report.problems.extend(problems)
        if size >= 0:
            report.files += 1
            report.bytes += size
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(loc.prefix):]
            if rel != MANIFEST and rel not in listed:
                report.problems.append(f"{rel}: in the bucket but not in the manifest")
    if local is not None:
        def same(entry: dict[str, Any]) -> bool:
            path = local / entry["path"]
            if not path.is_file():
                progress.advance(entry["size"])
                return False
            return sha256_file(path, progress) == entry["sha256"]

        for entry, ok in zip(entries, _parallel(workers, same, entries), strict=True):
            if not ok:
                report.problems.append(f"{entry['path']}: the local file differs from the manifest")
        extra = {p.relative_to(local).as_posix() for p in local_files(local)} - listed
        report.problems.extend(f"{rel}: local file not in the manifest" for rel in sorted(extra))
    return report


def _pulled_before(dest: Path) -> dict[str, dict[str, Any]]:
    """What an earlier successful pull recorded per file: SHA-256, size and mtime (ns)."""
    try:
        previous = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    local = previous.get("local") if isinstance(previous, dict) else None
    if not isinstance(local, dict):
        return {}
    digests = {e.get("path"): e.get("sha256") for e in previous.get("files", []) if isinstance(e, dict)}
    return {path: {**stat, "sha256": digests.get(path)} for path, stat in local.items()
            if isinstance(stat, dict)}


def pull(s3, model: str, source: str, dest: Path, *, workers: int = DEFAULT_WORKERS,
         rehash: bool = False, part_size: int = 64 * 2**20,
         progress: ProgressSink | None = None) -> Report:
    """Download into `dest`, verifying each file before it is renamed into place.

    A file already in place is kept without reading it when an earlier pull's manifest records
    the same SHA-256, size and modification time (`rehash` reads it anyway).
    """
    loc = S3Location.parse(source)
    manifest = read_manifest(s3, loc, model)
    progress = progress or _Quiet()
    entries = manifest["files"]
    for entry in entries:
        if not (dest / entry["path"]).resolve().is_relative_to(dest.resolve()):
            raise WeightsError(f"manifest path {entry['path']!r} escapes {dest}")
    progress.start(sum(e["size"] for e in entries))
    before = {} if rehash else _pulled_before(dest)
    config = _transfer_config(part_size)  # a few ranged GETs per file, `workers` files at once
    report = Report(model=model, files=len(entries), bytes=sum(e["size"] for e in entries))

    def fetch(entry: dict[str, Any]) -> tuple[str, str | None]:
        """("skipped" | "rehashed" | "pulled", problem or None)."""
        target = dest / entry["path"]
        if target.is_file():
            stat = target.stat()
            seen = before.get(entry["path"])
            if (seen and seen.get("sha256") == entry["sha256"] and stat.st_size == entry["size"]
                    and seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns):
                progress.advance(entry["size"])
                return "skipped", None
            if stat.st_size == entry["size"] and sha256_file(target) == entry["sha256"]:
                progress.advance(entry["size"])
                return "rehashed", None
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        s3.download_file(loc.bucket, loc.key(entry["path"]), str(partial),
                         Callback=progress.advance, Config=config)
        digest = sha256_file(partial)
        if digest != entry["sha256"]:
            partial.unlink()
            return "pulled", (f"{entry['path']}: downloaded SHA-256 {digest[:12]}… differs "
                              f"from the manifest's {entry['sha256'][:12]}…")
        os.replace(partial, target)
        return "pulled", None

    for outcome, problem in _parallel(workers, fetch, entries):
        if problem:
            report.problems.append(problem)
        if outcome in ("skipped", "rehashed"):
            report.skipped += 1
            report.rehashed += outcome == "rehashed"
    if report.ok:
        local = {}
        for entry in entries:
            stat = (dest / entry["path"]).stat()
            local[entry["path"]] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        (dest / MANIFEST).write_text(json.dumps({**manifest, "local": local}, indent=1))
    return report
