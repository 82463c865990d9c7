"""What tracing adds to a request in the router, measured in-process (`python -m loadtest.bench_tracing`).

The stack benchmark (bench_stacks, `govllm-traced`) compares whole stacks, but on a shared
2-core host its per-round ratios swing far more than tracing costs. This harness runs the
router's real request path (`build_request_path`: API-key check, parsing, model resolution,
confidentiality policy, quota in the embedded Redis over loopback, the audit begin and end
records made durable, settlement and the access log) three ways, alternating within each
round so host drift lands on all three:

* nohooks: the path as it was before tracing existed (steps, audit and finishers called
  directly);
* off: what the router does with tracing off: the same, plus the dispatcher's two no-op
  hooks (admission, attempt) and the router's `tracer is None` tests;
* on: every request traced as the router does it (root span, a span per step, dispatch,
  admission, the audit spans, the attempt with its traceparent injected), exported by the
  batch processor over OTLP/HTTP to an OTLP sink on 127.0.0.1 (loadtest/otlp_sink.py).

Reported per configuration: CPU per request (the whole process, the exporter's thread
included: each round ends with a flush) and the time from arrival to the upstream send
(what the router adds to TTFT), with ratios to nohooks taken within each round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

from loadtest.bench_tenancy import BODY, bench_store
from loadtest.otlp_sink import OTLPSink
from serving.config.tracing import TracingSettings
from serving.observability.tracing.names import AUDIT_BEGIN_SPAN, AUDIT_COMMIT_SPAN
from serving.observability.tracing.off import NO_TRACING
from serving.observability.tracing.spans import build_tracer
from serving.request import RequestContext
from serving.router.request_path import build_request_path
from serving.store import StoreKeyspace, async_client

MODES = ("nohooks", "off", "on")


class _Replica:
    url, replica_id = "http://127.0.0.1:41000", "bench-replica"


async def _drive(cfg, api_key: str, requests: int, mode: str, sink: OTLPSink) -> dict:
    """`requests` sequential requests in one mode: CPU per request and pre-dispatch p50 (µs)."""
    redis = async_client(cfg.store)
    path = build_request_path(cfg, redis, StoreKeyspace(cfg.store.namespace), chain_hint=f"bench-{mode}",
                              key_staleness_s=3600)
    await path.key_cache.load()
    tracer = None
    steps, begin, end = list(path.steps), path.audit.begin, path.audit.end
    if mode == "on":
        tracer = build_tracer(TracingSettings(enabled=True, endpoint=sink.url), app="bench",
                              instance="bench")
        steps = tracer.steps(steps)
        begin, end = tracer.hook(AUDIT_BEGIN_SPAN, begin), tracer.hook(AUDIT_COMMIT_SPAN, end)
    hooks = tracer or NO_TRACING
    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {api_key}".encode())]}
    model = cfg.models[0]

    async def forward(ctx: RequestContext, send) -> float:
        with hooks.admission(ctx):
            pass
        await begin(ctx)
        if mode == "nohooks":
            sent_at = time.perf_counter()  # the request would leave for the replica here
        else:
            with hooks.attempt(ctx, model, _Replica(), "/v1/chat/completions", {"a": "b"}):
                sent_at = time.perf_counter()
                ctx.attempts.append(f"{model.id}@{_Replica.url}: streaming")
        ctx.model, ctx.status, ctx.first_byte_at = model, 200, time.perf_counter()
        ctx.usage = {"prompt_tokens": 60, "completion_tokens": 32, "total_tokens": 92}
        ctx.response_chunks = [b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'] * 32
        await end(ctx)
        return sent_at

    async def one() -> float:
        ctx = RequestContext(request_id=uuid.uuid4().hex, operation="chat", scope=scope)
        ctx.raw_body = BODY
        t0 = time.perf_counter()
        if tracer is not None:
            tracer.begin(ctx)
        for step in steps:
            await step(ctx)
        box = {}

        async def keep(ctx, send):
            box["sent"] = await forward(ctx, send)

        await (tracer.dispatch(keep) if tracer is not None else keep)(ctx, None)
        for finish in path.finishers:
            await finish(ctx)
        if tracer is not None:
            tracer.end(ctx)
        return 1e6 * (box["sent"] - t0)

    try:
        for _ in range(50):  # warm caches and connections
            await one()
        if tracer is not None:
            tracer.flush()
        cpu0 = time.process_time()
        pre = [await one() for _ in range(requests)]
        if tracer is not None:
            tracer.flush()  # the export of this round's spans is part of its cost
        cpu = time.process_time() - cpu0
    finally:
        await asyncio.to_thread(path.audit.close)
        await redis.aclose()
        if tracer is not None:
            tracer.shutdown()
    return {"cpu_us_per_request": 1e6 * cpu / requests, "pre_dispatch_p50_us": statistics.median(pre)}


def run(requests: int, rounds: int) -> dict:
    sink = OTLPSink().start()
    try:
        with bench_store("bench_tracing") as (_, _, cfg, api_key):
            results = []
            for i in range(rounds):
                order = MODES if i % 2 == 0 else MODES[::-1]
                results.append({m: asyncio.run(_drive(cfg, api_key, requests, m, sink)) for m in order})
    finally:
        sink.stop()
    out: dict = {"requests_per_round": requests, "rounds": rounds, "spans_exported": sink.spans}
    for mode in MODES:
        out[mode] = {k: round(statistics.median(r[mode][k] for r in results), 1)
                     for k in ("cpu_us_per_request", "pre_dispatch_p50_us")}
    for mode in ("off", "on"):
        out[f"{mode}_vs_nohooks"] = {
            k: round(statistics.median(r[mode][k] / r["nohooks"][k] for r in results), 3)
            for k in ("cpu_us_per_request", "pre_dispatch_p50_us")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="Sequential requests per mode and round.")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.requests, args.rounds), indent=2))


if __name__ == "__main__":
    main()
