"""Audit pipeline throughput: records per second through the durable, encrypted spool.

Each record is what a streamed chat request produces: a Japanese prompt of
about 600 characters and a 32-event SSE answer that the writer assembles,
then chains, encrypts (AES-256-GCM) and fsyncs in group commits. The figure
to compare with the target (>= 2,000 records/s on one core) is records per
CPU-second of the whole process, since the writer is one thread; the wall
clock rate is reported too. Requests arrive from an asyncio loop, as in the
router, and each waits for its record to be durable.

The second measurement is what the begin/end split costs a request, through
the real AuditTrail (spool, uploader to a local directory): the latency of an
awaited begin record (what dispatch waits for), of the end record that
follows it, and of the single complete record a request has without a begin
(the end-only path), at 1 and 16 requests in flight, in the same run, plus
the CPU each path costs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from loadtest.llmload.metrics import percentile
from serving.audit.crypto import LocalKeyFileKeys
from serving.audit.spool import AuditSpool
from serving.audit.trail import AuditTrail
from serving.config import AuditSettings, DirectorySink, LocalKeyFile, ModelRoute
from serving.request import Principal, RequestContext

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


MODEL = ModelRoute(id="tiny-llama-ja", max_model_len=2048, revision="dev")
CHUNK = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1795390768,'
         b'"model":"tiny-llama-ja","choices":[{"index":0,"delta":{"content":"\xe4\xbc\x9a\xe8\xad\xb0"},'
         b'"logprobs":null,"finish_reason":null}]}\n\n')


def sample_context(i: int) -> RequestContext:
    """A streamed chat request as the router holds it just before dispatch."""
    payload = {"model": "tiny-llama-ja", "messages": [{"role": "user", "content": PROMPT}],
               "max_tokens": 32, "stream": True}
    ctx = RequestContext(request_id=f"bench-{i}", operation="chat",
                         scope={"type": "http", "client": ("127.0.0.1", 50000), "headers": []})
    ctx.principal = Principal(tenant="bench", user="u", credential_id="k")
    ctx.confidentiality, ctx.payload, ctx.stream = 2, payload, True
    ctx.raw_body = json.dumps(payload, ensure_ascii=False).encode()
    ctx.requested_model, ctx.candidates = "tiny-llama-ja", (MODEL,)
    return ctx


def answer(ctx: RequestContext) -> None:
    """What the dispatcher leaves on the context once the stream is relayed."""
    ctx.model, ctx.upstream, ctx.status = MODEL, "http://127.0.0.1:1", 200
    ctx.usage = {"prompt_tokens": 600, "completion_tokens": 32, "total_tokens": 632}
    ctx.first_byte_at = time.perf_counter()
    ctx.response_chunks = [CHUNK] * 32


def _us(samples: list[float]) -> dict:
    return {f"p{q}": round(1e6 * percentile(samples, q), 1) for q in (50, 99)}


async def _requests(trail: AuditTrail, n: int, concurrency: int, *, begin: bool, base: int) -> dict:
    """n requests, `concurrency` at a time: begin (awaited) then end, or the end alone."""
    begins, ends, totals = [], [], []
    it = iter(range(base, base + n))

    async def client() -> None:
        for i in it:
            ctx = sample_context(i)
            t0 = time.perf_counter()
            if begin:
                await trail.begin(ctx)
            t1 = time.perf_counter()
            answer(ctx)
            t2 = time.perf_counter()
            await trail.end(ctx)
            t3 = time.perf_counter()
            if begin:
                begins.append(t1 - t0)
            ends.append(t3 - t2)
            totals.append((t1 - t0) + (t3 - t2))

    cpu0 = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    cpu = time.process_time() - cpu0
    out = {"end_us": _us(ends), "audit_total_us": _us(totals), "cpu_us_per_request": round(1e6 * cpu / n, 1)}
    if begin:
        out["begin_us"] = _us(begins)
    return out


def run_pairs(n: int, concurrencies: tuple[int, ...] = (1, 16)) -> dict:
    """Begin+end per request against the end-only path, through the real trail."""
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = AuditSettings(spool_dir=f"{tmp}/spool", sink=DirectorySink(path=f"{tmp}/archive"),
                                 keys=LocalKeyFile(path=f"{tmp}/audit.key"),
                                 batch_max_records=1000, batch_max_s=5)
        trail = AuditTrail(settings, app="bench", chain_hint="bench")
        try:
            base = 0
            asyncio.run(_requests(trail, 100, 4, begin=True, base=base))  # warm up
            base += 100
            for concurrency in concurrencies:
                row = {}
                for path, begin in (("end_only", False), ("begin_end", True)):
                    row[path] = asyncio.run(_requests(trail, n, concurrency, begin=begin, base=base))
                    base += n
                results[f"c{concurrency}"] = row
        finally:
            trail.close()
    return {"requests": n, **results}


def pairs_table(result: dict) -> str:
    lines = ["| in flight | path | begin p50 / p99 µs | end p50 / p99 µs | audit total p50 µs | CPU µs/request |",
             "|---|---|---|---|---|---|"]
    for key, row in result.items():
        if not key.startswith("c"):
            continue
        for path, m in row.items():
            begin = f"{m['begin_us']['p50']:.0f} / {m['begin_us']['p99']:.0f}" if "begin_us" in m else "-"
            lines.append(f"| {key[1:]} | {path.replace('_', ' ')} | {begin} | "
                         f"{m['end_us']['p50']:.0f} / {m['end_us']['p99']:.0f} | "
                         f"{m['audit_total_us']['p50']:.0f} | {m['cpu_us_per_request']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=1000,
                        help="Requests per path and concurrency for the begin/end measurement (0: skip).")
    parser.add_argument("--output", type=Path, help="Markdown file to append the result to.")
    args = parser.parse_args()
    result = run(args.records, args.concurrency)
    print(json.dumps(result))
    pairs = run_pairs(args.pairs) if args.pairs else None
    if pairs:
        print(json.dumps(pairs))
        print(pairs_table(pairs))
    if args.output:
        with args.output.open("a") as f:
            f.write(
                f"\nAudit pipeline (`python -m loadtest.bench_audit --records {args.records}`): "
                f"{result['records_per_cpu_s']:.0f} records per CPU-second "
                f"({result['cpu_us_per_record']:.0f} µs of CPU per record: assemble a 32-event stream, "
                f"chain, AES-256-GCM, group-commit fsync), {result['records_per_s_wall']:.0f} records/s "
                f"wall clock with {args.concurrency} requests waiting at a time.\n"
            )
            if pairs:
                f.write(f"\nBegin/end records per request (`--pairs {args.pairs}`), same run:\n\n"
                        f"{pairs_table(pairs)}\n")


if __name__ == "__main__":
    main()
