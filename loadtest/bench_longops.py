"""Before/after timing of the long operator commands: weights push/verify/pull, audit verify.

`python -m loadtest.bench_longops --before REV` runs each operation with the code of git
revision REV (cluster/ops/weights.py and serving/audit/verify.py loaded from `git show`) and with
the working tree's, side by side in one run, against one real S3/KMS server (moto_server on
127.0.0.1, tests/servers.py). Each measurement runs in its own subprocess, so its peak RSS is
its own. Prints a Markdown table; the ratios are what docs/benchmarks.md quotes.

Caveat written into the output: moto is a Python server on the same 2 cores, with no network
latency, so parallel transfers gain far less here than against a remote object store, where
each request waits a round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

MIB = 2**20
ROOT = Path(__file__).resolve().parents[1]


def _module(name: str, path: str, rev: str | None):
    """The working tree's module, or the one at git revision `rev`."""
    if rev is None:
        return importlib.import_module(name)
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"{name}_at_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)  # noqa: S102
    return module


def _s3(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="ap-northeast-1")


def measure(args) -> dict:
    """One operation in this process (a child): wall seconds and peak RSS."""
    rev = args.rev or None
    if args.op.startswith("weights"):
        w = _module("cluster.ops.weights", "cluster/ops/weights.py", rev)
        s3 = w.s3_client(endpoint_url=args.url, region="ap-northeast-1")
        kw = {} if rev else {"workers": args.workers}
        dest = f"s3://{args.bucket}/{args.prefix}/"
        s3.list_buckets()  # connection and credentials resolved before the clock starts
        t0 = time.perf_counter()
        if args.op == "weights-push":
            w.push(s3, "bench", Path(args.dir), dest, kms_key_id=args.kms, part_size=8 * MIB, **kw)
        elif args.op == "weights-verify":
            assert w.verify(s3, "bench", dest, **kw).ok
        elif args.op in ("weights-pull", "weights-pull-again"):
            assert w.pull(s3, "bench", dest, Path(args.dir), **kw).ok
    else:
        from serving.audit.crypto import KmsKeys
        from serving.audit.objectstore import S3Store
        from serving.config import KmsKey, S3Sink

        v = _module("serving.audit.verify", "serving/audit/verify.py", rev)
        store = S3Store(S3Sink(bucket=args.bucket, endpoint_url=args.url))
        keys = KmsKeys(KmsKey(key_id=args.kms, endpoint_url=args.url))
        now = datetime.now().astimezone()
        span = (now - timedelta(hours=2), now + timedelta(hours=1))
        kw = {} if rev else {"workers": args.workers, "keep_records": args.op == "audit-export"}
        t0 = time.perf_counter()
        report, _ = v.walk(store, keys, *span, **kw)
        assert report.objects == args.expect, (report.objects, report.as_dict())
    return {"seconds": time.perf_counter() - t0,
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(op: str, rev: str, **kw) -> dict:
    cmd = [sys.executable, "-m", "loadtest.bench_longops", "--child", op, "--rev", rev]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _archive(url: str, bucket: str, kms: str, segments: int, per_segment: int) -> None:
    """A real chain: spool -> uploader -> S3 with KMS data keys (one per segment)."""
    from loadtest.bench_audit import sample_record
    from serving.audit.crypto import KmsKeys
    from serving.audit.objectstore import S3Store
    from serving.audit.spool import AuditSpool
    from serving.audit.uploader import Uploader
    from serving.config import KmsKey, S3Sink

    keys = KmsKeys(KmsKey(key_id=kms, endpoint_url=url))
    store = S3Store(S3Sink(bucket=bucket, endpoint_url=url))
    with tempfile.TemporaryDirectory() as tmp:
        spool = AuditSpool(Path(tmp), keys, app="bench", batch_max_records=per_segment, batch_max_s=600)

        async def write():
            for i in range(segments * per_segment):
                await spool.append(sample_record(i))

        asyncio.run(write())
        spool.close()
        Uploader(Path(tmp), store, keys).upload_once()


def _order(args):
    """(label, revision, round) in the order measured: before/after alternating per round."""
    for r in range(args.rounds):
        pair = [("before", args.before, r), ("after", "", r)]
        yield from (pair if r % 2 == 0 else pair[::-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="032ed89", help="git revision of the 'before' code")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-mib", type=int, default=24)
    parser.add_argument("--segments", type=int, default=600)
    parser.add_argument("--per-segment", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4, help="weights: files in parallel (CLI default)")
    parser.add_argument("--audit-workers", type=int, default=8, help="audit: segments in parallel (CLI default)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, before/after order reversed each round; medians reported")
    # child mode
    parser.add_argument("--child")
    parser.add_argument("--rev", default="")
    for name in ("url", "bucket", "kms", "dir", "prefix"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--expect", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        args.op = args.child
        print(json.dumps(measure(args)))
        return

    from tests.servers import AWS_ENV, start_moto

    os.environ.update({k: v for k, v in AWS_ENV.items() if k not in os.environ})
    server = start_moto()
    try:
        s3 = _s3(server.url)
        kms = server.client("kms").create_key(Description="bench")["KeyMetadata"]["Arn"]
        for b in ("bench-weights", "bench-audit"):
            s3.create_bucket(Bucket=b, CreateBucketConfiguration={"LocationConstraint": "ap-northeast-1"})
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "ckpt"
            src.mkdir()
            for i in range(args.files):
                (src / f"model-{i:05d}.safetensors").write_bytes(os.urandom(args.file_mib * MIB))
            common = {"url": server.url, "bucket": "bench-weights", "kms": kms, "workers": args.workers}
            for label, rev, r in _order(args):
                prefix = f"w-{label}-{r}"
                pulled = Path(tmp) / f"pulled-{label}-{r}"
                rows.append((label, "weights push", _child("weights-push", rev, dir=src, prefix=prefix, **common)))
                rows.append((label, "weights verify", _child("weights-verify", rev, prefix=prefix, **common)))
                rows.append((label, "weights pull (empty node)", _child("weights-pull", rev, dir=pulled,
                                                                         prefix=prefix, **common)))
                rows.append((label, "weights pull (pod restart)", _child("weights-pull-again", rev, dir=pulled,
                                                                          prefix=prefix, **common)))
        _archive(server.url, "bench-audit", kms, args.segments, args.per_segment)
        common = {"url": server.url, "bucket": "bench-audit", "kms": kms, "workers": args.audit_workers,
                  "expect": args.segments}
        for label, rev, _ in _order(args):
            rows.append((label, "audit verify", _child("audit-verify", rev, **common)))
            rows.append((label, "audit export (walk)", _child("audit-export", rev, **common)))
    finally:
        server.stop()
    ops = list(dict.fromkeys(op for _, op, _ in rows))
    got = {}
    for key in {(label, op) for label, op, _ in rows}:
        runs = [r for label, op, r in rows if (label, op) == key]
        got[key] = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "rss_mib")}
    size = args.files * args.file_mib
    print(f"`python -m loadtest.bench_longops --before {args.before} --files {args.files} "
          f"--file-mib {args.file_mib} --segments {args.segments} --per-segment {args.per_segment} "
          f"--workers {args.workers} --audit-workers {args.audit_workers} --rounds {args.rounds}` (medians of {args.rounds} rounds, "
          f"before/after order reversed each round): checkpoint {args.files} x {args.file_mib} MiB = {size} MiB; "
          f"audit chain of {args.segments} segments x {args.per_segment} records, one KMS data key "
          "per segment; moto_server (S3 + KMS) on 127.0.0.1, same host, no network latency.\n")
    print("| operation | before s | after s | after / before | peak RSS before / after MiB |")
    print("|---|---|---|---|---|")
    for op in ops:
        b, a = got[("before", op)], got[("after", op)]
        print(f"| {op} | {b['seconds']:.2f} | {a['seconds']:.2f} | {a['seconds'] / b['seconds']:.2f}x "
              f"| {b['rss_mib']:.0f} / {a['rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
