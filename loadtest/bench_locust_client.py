"""Does locust's FastHttpUser measure TTFT as accurately as HttpUser, at lower client CPU?

`python -m loadtest.bench_locust_client --users 50 --seconds 30` runs the same streaming user
(loadtest/llmload/stream.py's StreamMeter over the raw reads, as the locustfile does) once on
HttpUser (requests) and once on FastHttpUser (geventhttpclient), each in its own headless
locust process, against one SSE server whose timing is known: the first content event leaves
the server `--first-ms` after the request arrived, then `--tokens` events `--gap-ms` apart, in
vLLM's chunk format. The server runs in its own process (aiohttp), so the locust process's CPU
is the client's alone (its rusage after it exits).

Reported per client: requests completed, measured TTFT minus the server's own first-event
delay (p50/p99: the client's measurement error plus loopback), and client CPU seconds per
request. Rounds alternate the order; medians across rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.llmload.metrics import percentile

ROOT = Path(__file__).resolve().parents[1]

SERVER = r'''
import asyncio, json, sys, time
from aiohttp import web

FIRST, GAP, TOKENS = float(sys.argv[2]) / 1000, float(sys.argv[3]) / 1000, int(sys.argv[4])
CHUNK = ('data: {"id":"chatcmpl-b","object":"chat.completion.chunk","created":1,"model":"bench",'
         '"choices":[{"index":0,"delta":{"content":"会議"},"logprobs":null,"finish_reason":null}]}\n\n')

async def chat(request):
    arrived = time.perf_counter()
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(max(0.0, FIRST - (time.perf_counter() - arrived)))
    for _ in range(TOKENS):
        await resp.write(CHUNK.encode())
        await asyncio.sleep(GAP)
    usage = {"prompt_tokens": 10, "completion_tokens": TOKENS, "total_tokens": 10 + TOKENS}
    await resp.write(("data: " + json.dumps({"choices": [], "usage": usage}) + "\n\ndata: [DONE]\n\n").encode())
    return resp

app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
'''

USERS = r'''
import json, os, time
from locust import HttpUser, constant, task
from locust.contrib.fasthttp import FastHttpUser
from loadtest.llmload.stream import StreamMeter

OUT = open(os.environ["BENCH_OUT"], "a", buffering=1)
BODY = {"model": "bench", "messages": [{"role": "user", "content": "x"}], "stream": True}

def measure(client, *, fast):
    start = time.perf_counter()
    with client.post("/v1/chat/completions", json=BODY, stream=True, catch_response=True) as resp:
        meter = StreamMeter(start)
        if fast == "lines":  # geventhttpclient's readline: one SSE line as soon as it ends
            raw = resp._response
            chunks = iter(lambda: raw.readline(b"\n"), b"")
        elif fast:  # locust's FastResponse.iter_content: read(n) waits for n bytes
            chunks = resp.iter_content(chunk_size=1024, decode_content=False)
        else:
            chunks = resp.iter_content(chunk_size=None)
        for data in chunks:
            meter.feed(data, time.perf_counter())
        m = meter.result
        if m.done and m.ttft_s is not None:
            resp.success()
            OUT.write(json.dumps({"ttft_ms": 1000 * m.ttft_s}) + "\n")
        else:
            resp.failure(m.error or "incomplete stream")

class Requests(HttpUser):
    wait_time = constant(0.2)
    @task
    def t(self):
        measure(self.client, fast=False)

class Fast(FastHttpUser):
    wait_time = constant(0.2)
    @task
    def t(self):
        measure(self.client, fast=True)

class FastLines(FastHttpUser):
    wait_time = constant(0.2)
    @task
    def t(self):
        measure(self.client, fast="lines")
'''


def _run_locust(user_class: str, port: int, users: int, seconds: int, tmp: Path) -> dict:
    out = tmp / f"{user_class}-{time.monotonic_ns()}.jsonl"
    out.touch()
    cmd = [sys.executable, "-m", "locust", "-f", str(tmp / "bench_users.py"), user_class,
           "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
           "--host", f"http://127.0.0.1:{port}", "--only-summary", "--stop-timeout", "10"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "BENCH_OUT": str(out), "PYTHONPATH": str(ROOT)})
    _, _, usage = os.wait4(proc.pid, 0)
    ttft = [json.loads(line)["ttft_ms"] for line in out.read_text().splitlines() if line]
    return {"requests": len(ttft), "ttft_ms": ttft, "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--first-ms", type=float, default=100.0)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    from govllm.runtime_env import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "server.py").write_text(SERVER)
        (tmp / "bench_users.py").write_text(USERS)
        server = subprocess.Popen([sys.executable, str(tmp / "server.py"), str(port), str(args.first_ms),
                                   str(args.gap_ms), str(args.tokens)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            time.sleep(2.0)
            results: dict[str, list[dict]] = {"Requests": [], "Fast": [], "FastLines": []}
            for r in range(args.rounds):
                order = list(results) if r % 2 == 0 else list(results)[::-1]
                for cls in order:
                    results[cls].append(_run_locust(cls, port, args.users, args.seconds, tmp))
        finally:
            server.terminate()
            server.wait(10)
    print(f"`python -m loadtest.bench_locust_client --users {args.users} --seconds {args.seconds} "
          f"--rounds {args.rounds} --first-ms {args.first_ms:g} --gap-ms {args.gap_ms:g} "
          f"--tokens {args.tokens}`: one SSE server process with a known first-event delay of "
          f"{args.first_ms:g} ms; medians across rounds (order alternated).\n")
    print("| locust user | requests | TTFT error p50 ms | TTFT error p99 ms | client CPU ms per request |")
    print("|---|---|---|---|---|")
    names = {"Requests": "HttpUser (requests), iter_content(None): what the locustfile runs",
             "Fast": "FastHttpUser, iter_content(1024): locust's public streaming API",
             "FastLines": "FastHttpUser, geventhttpclient readline (private `_response`)"}
    for cls, runs in results.items():
        errs50 = statistics.median(percentile(x["ttft_ms"], 50) - args.first_ms for x in runs if x["ttft_ms"])
        errs99 = statistics.median(percentile(x["ttft_ms"], 99) - args.first_ms for x in runs if x["ttft_ms"])
        cpu = statistics.median(1000 * x["cpu_s"] / max(1, x["requests"]) for x in runs)
        reqs = statistics.median(x["requests"] for x in runs)
        print(f"| {names[cls]} | {reqs:.0f} | {errs50:.2f} | {errs99:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
