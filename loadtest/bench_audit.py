"""Audit pipeline throughput: records per second through the durable, encrypted spool.

Each record is what a streamed chat request produces: a Japanese prompt of
about 600 characters and a 32-event SSE answer that the writer assembles,
then chains, encrypts (AES-256-GCM) and fsyncs in group commits. The figure
to compare with the target (>= 2,000 records/s on one core) is records per
CPU-second of the whole process, since the writer is one thread; the wall
clock rate is reported too. Requests arrive from an asyncio loop, as in the
router, and each waits for its record to be durable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from serving.audit.crypto import LocalKeyFileKeys
from serving.audit.spool import AuditSpool

PROMPT = "令和八年度予算案に関する会議の議事録を三点に要約し、関係部署への連絡事項を整理してください。" * 12


def sample_record(i: int) -> dict:
    chunks = [
        b'data: {"id":"chatcmpl-%d","object":"chat.completion.chunk","created":1795390768,'
        b'"model":"tiny-llama-ja","choices":[{"index":0,"delta":{"content":"\xe4\xbc\x9a\xe8\xad\xb0"},'
        b'"logprobs":null,"finish_reason":null}]}\n\n' % i
        for _ in range(32)
    ]
    return {
        "type": "request", "request_id": f"bench-{i}", "time": time.time(), "tenant": "bench",
        "user": "u", "model_id": "tiny-llama-ja", "model_revision": "dev", "confidentiality": 2,
        "prompt": [{"role": "user", "content": PROMPT}], "parameters": {"max_tokens": 32, "stream": True},
        "usage": {"prompt_tokens": 600, "completion_tokens": 32, "total_tokens": 632},
        "status": 200, "stream": True, "training_use": "prohibited", "_response": (chunks, None),
    }


async def drive(spool: AuditSpool, n: int, concurrency: int) -> None:
    it = iter(range(n))

    async def client() -> None:
        for i in it:
            await spool.append(sample_record(i))

    await asyncio.gather(*(client() for _ in range(concurrency)))


def run(n: int, concurrency: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        keys = LocalKeyFileKeys(Path(tmp) / "audit.key")
        spool = AuditSpool(Path(tmp) / "spool", keys, app="bench", batch_max_records=1000, batch_max_s=5)
        asyncio.run(drive(spool, 200, concurrency))  # warm up
        cpu0, wall0 = time.process_time(), time.perf_counter()
        asyncio.run(drive(spool, n, concurrency))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        spool.close()
    return {
        "records": n,
        "concurrency": concurrency,
        "records_per_s_wall": round(n / wall, 1),
        "records_per_cpu_s": round(n / cpu, 1),
        "cpu_us_per_record": round(1e6 * cpu / n, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--output", type=Path, help="Markdown file to append the result to.")
    args = parser.parse_args()
    result = run(args.records, args.concurrency)
    print(json.dumps(result))
    if args.output:
        with args.output.open("a") as f:
            f.write(
                f"\nAudit pipeline (`python -m loadtest.bench_audit --records {args.records}`): "
                f"{result['records_per_cpu_s']:.0f} records per CPU-second "
                f"({result['cpu_us_per_record']:.0f} µs of CPU per record: assemble a 32-event stream, "
                f"chain, AES-256-GCM, group-commit fsync), {result['records_per_s_wall']:.0f} records/s "
                f"wall clock with {args.concurrency} requests waiting at a time.\n"
            )


if __name__ == "__main__":
    main()
