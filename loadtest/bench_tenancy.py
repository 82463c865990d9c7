"""What authentication, quota and audit add to a request, measured in-process.

The end-to-end benchmark (bench_stacks) compares the router with and without
these steps, but on a 2-core host its per-round TTFT differences swing by
several milliseconds either way, far more than the steps cost. This harness
times the router's real request-path code instead: the steps, audit trail and
finishers that `build_request_path` (serving/router/request_path.py) gives the
router deployment too (API-key check against the key cache, request parsing,
model resolution, confidentiality policy, PII guard where configured, quota
admission in the shared Redis over loopback, the audit begin record made
durable), then the audit end record (encrypted, fsynced spool record) and the
finishers (quota settlement, access log), for a full and a bare configuration
(bare: authentication, limits and audit off, so those steps pass through).

What the steps add to TTFT is the difference of the pre-dispatch time (full
minus bare): the router forwards the request only after its steps ran and its
begin record is durable. The end record is made durable before the last bytes
of the response, so it adds to latency, not TTFT; settlement runs after the
response.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from cluster.render.serve_config import serving_config
from cluster.spec.schema import DEFAULT_SPEC_PATH, ClusterSpec
from govllm import embedded_store
from govllm.runtime_env import free_port
from loadtest.bench_stacks import apply_profile
from loadtest.llmload.metrics import percentile
from serving.config import ServingConfig
from serving.request import RequestContext
from serving.router.request_path import build_request_path
from serving.store import StoreKeyspace, async_client, sync_client
from serving.tenancy.keystore import KeyAdmin

BODY = json.dumps({
    "model": "tiny-llama-ja", "stream": True, "max_tokens": 32,
    "messages": [{"role": "user", "content": "住民票の写しを請求する手続を教えてください。" * 4}],
}).encode()


#: One streamed chunk as vLLM 0.32 sends it with continuous_usage_stats (what the router meters).
CHUNK = (b'data: {"id":"chatcmpl-0123456789abcdef0123456789abcdef","object":"chat.completion.chunk",'
         b'"created":1796093788,"model":"tiny-llama-ja","choices":[{"index":0,"delta":{"content":'
         b'"\xe4\xbd\x8f\xe6\xb0\x91"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":'
         b'{"prompt_tokens":60,"total_tokens":%d,"completion_tokens":%d,"completion_tokens_details":null}}\n\n')


def stream_costs(chunks: int = 20000) -> dict:
    """Per-chunk cost of reading and removing the engine's token count, and per-body cost of the
    strict JSON parse, against what the router did before (forward as is; plain json.loads)."""
    from serving.router.json_body import parse_object
    from serving.router.metering import StreamMeter

    blocks = [CHUNK % (60 + i, i) for i in range(1, 257)]
    meter = StreamMeter()
    t0 = time.perf_counter()
    for i in range(chunks):
        out, seen = meter.scan(blocks[i % 256])
        meter.commit(seen)
    metered = (time.perf_counter() - t0) / chunks
    t0 = time.perf_counter()
    for i in range(chunks):
        blocks[i % 256].rfind(b"\n\n")  # the router's own per-chunk event cut, kept as the baseline
    plain = (time.perf_counter() - t0) / chunks
    t0 = time.perf_counter()
    for _ in range(chunks // 4):
        parse_object(BODY)
    strict = (time.perf_counter() - t0) / (chunks // 4)
    t0 = time.perf_counter()
    for _ in range(chunks // 4):
        json.loads(BODY)
    loads = (time.perf_counter() - t0) / (chunks // 4)
    return {"meter_per_chunk_us": round(1e6 * (metered - plain), 2),
            "strict_json_extra_us": round(1e6 * (strict - loads), 2),
            "json_loads_us": round(1e6 * loads, 2)}


def _config(state: Path, port: int, *, full: bool) -> ServingConfig:
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    spec["state_dir"] = str(state)
    spec["store"] = {"embedded": True, "port": port}
    apply_profile(spec, "full" if full else "bare")
    return serving_config(ClusterSpec.model_validate(spec))


def _percentiles(samples: list[float]) -> dict:
    return {f"p{q}_us": round(percentile(samples, q), 1) for q in (50, 90, 99)}


async def _drive(cfg: ServingConfig, requests: int, api_key: str | None) -> dict:
    keys = StoreKeyspace(cfg.store.namespace)
    redis = async_client(cfg.store)
    # the router's own request path (serving/router/request_path.py); the bench never watches
    # for key changes, so its rounds must not count as a stale key copy
    path = build_request_path(cfg, redis, keys, chain_hint="bench", key_staleness_s=3600)
    await path.key_cache.load()
    steps, trail = path.steps, path.audit
    headers = [(b"content-type", b"application/json")]
    if api_key:
        headers.append((b"authorization", f"Bearer {api_key}".encode()))
    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": headers,
             "client": ("127.0.0.1", 50000)}
    before, end, after = [], [], []
    per_step: dict[str, list[float]] = {}
    try:
        for i in range(requests + 50):
            ctx = RequestContext(request_id=uuid.uuid4().hex, operation="chat", scope=scope)
            ctx.raw_body = BODY
            t0 = t1 = time.perf_counter()
            for step in steps:
                await step(ctx)
                t = time.perf_counter()
                if i >= 50:
                    per_step.setdefault(type(step).__name__, []).append(1e6 * (t - t1))
                t1 = t
            if trail is not None:  # the begin record is durable before the prompt is dispatched
                await trail.begin(ctx)
                t = time.perf_counter()
                if i >= 50:
                    per_step.setdefault("AuditBegin", []).append(1e6 * (t - t1))
                t1 = t
            # what the replica would have answered, as the dispatcher records it
            ctx.model, ctx.upstream = ctx.candidates[0], "http://127.0.0.1:1"
            ctx.status, ctx.first_byte_at = 200, t1
            ctx.usage = {"prompt_tokens": 60, "completion_tokens": 32, "total_tokens": 92}
            ctx.response_chunks = [b'data: {"choices":[{"delta":{"content":"\xe4\xbd\x8f"}}]}\n\n'] * 32
            if trail is not None:
                await trail.end(ctx)
            t2 = time.perf_counter()
            for finish in path.finishers:  # settlement (a Redis round trip with a tenant), access log
                await finish(ctx)
            t3 = time.perf_counter()
            if i >= 50:  # the first requests warm caches and connections
                before.append(1e6 * (t1 - t0))
                end.append(1e6 * (t2 - t1))
                after.append(1e6 * (t3 - t2))
    finally:
        if trail is not None:
            await asyncio.to_thread(trail.close)
        await redis.aclose()
    return {"pre_dispatch": _percentiles(before), "audit_end": _percentiles(end),
            "settle": _percentiles(after),
            "steps": {name: round(statistics.median(v), 1) for name, v in per_step.items()},
            "router_steps": [type(step).__name__ for step in steps]}


@contextmanager
def bench_store(label: str) -> Iterator[tuple[Path, int, ServingConfig, str]]:
    """An embedded Redis in a temporary state directory, the full profile's config and an API
    key of its bench tenant: (state dir, store port, config, key). Shared by the in-process
    benchmarks (this one, bench_tracing) so they set up the same store the same way."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        port = free_port()
        redis_proc = embedded_store.start(state / "redis", port)
        try:
            full = _config(state, port, full=True)
            admin = KeyAdmin(sync_client(full.store), StoreKeyspace(full.store.namespace))
            api_key, _ = admin.create("bench", "bench-user", label)
            yield state, port, full, api_key
        finally:
            embedded_store.stop(redis_proc)


def run(requests: int) -> dict:
    with bench_store("bench_tenancy") as (state, port, full, api_key):
        bare = _config(state, port, full=False)
        # alternate the two configurations so host drift lands on both
        rounds = {"bare": [], "full": []}
        for _ in range(3):
            rounds["bare"].append(asyncio.run(_drive(bare, requests, None)))
            rounds["full"].append(asyncio.run(_drive(full, requests, api_key)))

    def med(name: str, part: str) -> float:
        return statistics.median(r[part]["p50_us"] for r in rounds[name])

    return {
        "requests_per_round": requests, "rounds": 3,
        "stream": stream_costs(),
        "pre_dispatch_p50_us": {"bare": med("bare", "pre_dispatch"), "full": med("full", "pre_dispatch")},
        "added_to_ttft_p50_us": round(med("full", "pre_dispatch") - med("bare", "pre_dispatch"), 1),
        "audit_begin_p50_us": statistics.median(r["steps"]["AuditBegin"] for r in rounds["full"]),
        "audit_end_p50_us": med("full", "audit_end"),
        "settle_p50_us": med("full", "settle"),
        "router_steps": rounds["full"][0]["router_steps"],
        "full_steps_p50_us": {name: statistics.median(r["steps"][name] for r in rounds["full"])
                              for name in rounds["full"][0]["steps"]},
        "full_p99_us": {part: statistics.median(r[part]["p99_us"] for r in rounds["full"])
                        for part in ("pre_dispatch", "audit_end", "settle")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="Sequential requests per round.")
    parser.add_argument("--output", type=Path, help="Markdown file to append the result to.")
    args = parser.parse_args()
    result = run(args.requests)
    print(json.dumps(result))
    if args.output:
        with args.output.open("a") as f:
            f.write(
                "\n### Tenancy steps in-process (`python -m loadtest.bench_tenancy`)\n\n"
                f"{args.requests} sequential requests x 3 rounds through the router's real steps, "
                "shared store = embedded Redis on 127.0.0.1; medians of per-round p50s.\n\n"
                "| part | p50 | p99 (full) |\n|---|---|---|\n"
                f"| pre-dispatch, bare (no auth/quota/audit) | {result['pre_dispatch_p50_us']['bare']} µs | |\n"
                f"| pre-dispatch, full | {result['pre_dispatch_p50_us']['full']} µs | "
                f"{result['full_p99_us']['pre_dispatch']} µs |\n"
                f"| **added to TTFT (full - bare)** | **{result['added_to_ttft_p50_us']} µs** | |\n"
                f"| audit begin record (before dispatch; part of pre-dispatch) | "
                f"{result['audit_begin_p50_us']} µs | |\n"
                f"| audit end record (before the last byte) | {result['audit_end_p50_us']} µs | "
                f"{result['full_p99_us']['audit_end']} µs |\n"
                f"| quota settlement (after the response) | {result['settle_p50_us']} µs | "
                f"{result['full_p99_us']['settle']} µs |\n\n"
                "Pre-dispatch p50 by step (full): "
                + ", ".join(f"{name} {us} µs" for name, us in result["full_steps_p50_us"].items())
                + ".\n\n"
                f"Per streamed chunk, reading and removing the engine's token count (StreamMeter): "
                f"{result['stream']['meter_per_chunk_us']} µs. Strict JSON parsing of the request "
                f"body (duplicate keys, constants, surrogates, depth) over plain json.loads: "
                f"{result['stream']['strict_json_extra_us']} µs (json.loads alone "
                f"{result['stream']['json_loads_us']} µs).\n"
            )


if __name__ == "__main__":
    main()
