"""A lean streaming benchmark client for OpenAI-compatible endpoints.

`make bench` compares three serving stacks on the same machine in one run, so
the client must cost as little CPU as possible (on 2 cores it competes with
the server it measures) and must treat every stack identically: the same
requests, the same concurrency, the same clock. It speaks raw HTTP with
aiohttp and parses SSE itself instead of using the `openai` client, whose
per-chunk pydantic parsing would dominate the measurement.

TTFT is the time from sending the request to the first SSE event that carries
non-empty generated text; latency is the time to the `[DONE]` event.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

from serving.sse import SSEParser


@dataclass
class RequestTiming:
    ttft_s: float
    latency_s: float
    output_tokens: int


@dataclass
class BenchResult:
    name: str
    concurrency: int
    requests: int
    wall_s: float
    timings: list[RequestTiming] = field(default_factory=list)
    errors: int = 0

    @property
    def ttft_p50_ms(self) -> float:
        return 1000 * statistics.median(t.ttft_s for t in self.timings)

    @property
    def latency_p50_ms(self) -> float:
        return 1000 * statistics.median(t.latency_s for t in self.timings)

    @property
    def throughput_rps(self) -> float:
        return len(self.timings) / self.wall_s

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": len(self.timings),
            "errors": self.errors,
            "ttft_p50_ms": round(self.ttft_p50_ms, 2),
            "latency_p50_ms": round(self.latency_p50_ms, 2),
            "throughput_rps": round(self.throughput_rps, 2),
        }


def _chat_body(model: str, prompt: str, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


async def _one_request(session, url: str, headers: dict, body: bytes) -> RequestTiming:
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        parser = SSEParser()  # serving/sse.py: the one SSE parser
        async for data in resp.content.iter_any():
            for payload in parser.feed(data):
                if payload == b"[DONE]":
                    return RequestTiming(ttft or 0.0, time.perf_counter() - start, tokens)
                chunk = json.loads(payload)
                if ttft is None:
                    choices = chunk.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        ttft = time.perf_counter() - start
                usage = chunk.get("usage")
                if usage:
                    tokens = usage.get("completion_tokens", tokens)
    raise RuntimeError("stream ended without [DONE]")


async def run_bench(
    name: str,
    base_url: str,
    *,
    model: str,
    api_key: str | None = None,
    concurrency: int = 16,
    requests: int = 256,
    max_tokens: int = 32,
    prompt: str = "本日の会議の議事録を要約してください。",
    warmup: int = 16,
) -> BenchResult:
    """Send `requests` streaming chat requests, `concurrency` at a time."""
    import aiohttp

    url = base_url.rstrip("/") + "/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = _chat_body(model, prompt, max_tokens)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(max(1, warmup // concurrency)):
            await asyncio.gather(
                *(_one_request(session, url, headers, body) for _ in range(concurrency))
            )
        result = BenchResult(name=name, concurrency=concurrency, requests=requests, wall_s=0.0)
        remaining = iter(range(requests))

        async def worker() -> None:
            for _ in remaining:
                try:
                    result.timings.append(await _one_request(session, url, headers, body))
                except Exception:  # counted, the run goes on
                    result.errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - start
    return result


if __name__ == "__main__":  # ad-hoc use: python -m loadtest.serving_bench URL MODEL [KEY]
    import sys

    url, model = sys.argv[1], sys.argv[2]
    key = sys.argv[3] if len(sys.argv) > 3 else None
    for conc in (1, 16):
        res = asyncio.run(run_bench("adhoc", url, model=model, api_key=key, concurrency=conc,
                                    requests=64 if conc == 1 else 256))
        print(json.dumps(res.as_dict()))
