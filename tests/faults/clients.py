"""Clients that misbehave on purpose, over raw sockets, and what they saw.

A raw socket lets a test stop at an exact point (before the response
headers, after k events, just before `[DONE]`) and know exactly which bytes
it received. Streams ask for `continuous_usage_stats`, so every event the
client received carries the engine's token count so far: the client knows
precisely how many tokens reached it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field

import redis


@dataclass
class Received:
    """What one client got: status, headers, events, and the tokens and text they carried."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    done: bool = False
    closed_by_server: bool = False
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    body: bytes = b""  # the whole body of a non-streamed (error) response

    @property
    def error_code(self) -> str | None:
        try:
            return json.loads(self.body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-govllm-request-id")

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def errors(self) -> list[dict]:
        return [e["error"] for e in self.events if "error" in e]

    def absorb(self, event: dict) -> None:
        self.events.append(event)
        usage = event.get("usage")
        if usage and event.get("choices"):  # per-chunk counts (continuous usage stats)
            self.prompt_tokens = usage["prompt_tokens"]
            self.completion_tokens = max(self.completion_tokens, usage["completion_tokens"])
        elif usage:  # the final usage event
            self.prompt_tokens, self.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        for choice in event.get("choices") or []:
            self.text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""


def request_bytes(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
            f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def stream(port: int, body: dict, headers: dict[str, str], *, stop_after_events: int | None = None,
           stop_before_done: bool = False, stop_before_headers: bool = False,
           timeout_s: float = 60.0, on_event=None, barrier: threading.Barrier | None = None) -> Received:
    """POST a streamed request; stop reading (close the socket) at the chosen point.

    `on_event(received)` is called after each event (a test can inject a fault mid-stream).
    `barrier`: connect, then wait for the other parties before sending, so that many requests
    arrive together (thread start-up would otherwise spread a burst over a second).
    """
    body = {**body, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    got = Received()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    try:
        if barrier is not None:
            barrier.wait(timeout_s)
        sock.sendall(request_bytes(port, "/v1/chat/completions", json.dumps(body).encode(), headers))
        if stop_before_headers:
            return got
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                got.closed_by_server = True
                return got
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        got.status = int(lines[0].split()[1])
        got.headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        if got.status != 200:  # an error answer: one JSON body
            length = int(got.headers.get("content-length", "0"))
            while len(buf) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
            got.body = buf[:length]
            return got
        chunked = got.headers.get("transfer-encoding") == "chunked"
        payload = b""
        while True:
            if chunked:
                payload, buf, ended = _dechunk(payload, buf)
            else:
                payload, buf, ended = payload + buf, b"", False
            while b"\n\n" in payload:
                event, payload = payload.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    continue
                if event == b"data: [DONE]":
                    got.done = True
                    return got
                data = json.loads(event[6:])
                if stop_before_done and data.get("usage") and not data.get("choices"):
                    got.absorb(data)
                    return got  # the whole answer, but not its [DONE]
                got.absorb(data)
                if on_event is not None:
                    on_event(got)
                if stop_after_events is not None and len(got.events) >= stop_after_events:
                    return got
            if ended:
                return got
            chunk = sock.recv(65536)
            if not chunk:
                got.closed_by_server = True
                return got
            buf += chunk
    finally:
        sock.close()


def streams_in_flight(port: int, body: dict, headers: dict[str, dict[str, str]], *,
                      timeout_s: float = 60.0) -> tuple[list[threading.Thread], dict[str, Received]]:
    """Start one stream per entry of `headers` (client id -> headers); return once every one
    has received its first event, so a fault injected next lands while all of them run.

    The results dict fills in as the streams end; join the threads before reading it.
    """
    results: dict[str, Received] = {}
    started = threading.Semaphore(0)

    def one(cid: str) -> None:
        first: list[int] = []

        def on_event(_: Received) -> None:
            if not first:
                first.append(1)
                started.release()

        results[cid] = stream(port, body, headers[cid], on_event=on_event)

    threads = [threading.Thread(target=one, args=(cid,)) for cid in headers]
    for t in threads:
        t.start()
    for _ in threads:
        assert started.acquire(timeout=timeout_s), "a stream did not start"
    return threads, results


def _dechunk(payload: bytes, buf: bytes) -> tuple[bytes, bytes, bool]:
    """Move complete HTTP chunks from `buf` to `payload`; True once the last chunk arrived."""
    while True:
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            return payload, buf, False
        size = int(buf[:line_end].split(b";")[0], 16)
        if size == 0:
            return payload, b"", True
        if len(buf) < line_end + 2 + size + 2:
            return payload, buf, False
        payload += buf[line_end + 2: line_end + 2 + size]
        buf = buf[line_end + 2 + size + 2:]


def trickle(port: int, data: bytes, *, hold_s: float) -> tuple[float, bytes]:
    """Send `data`, then nothing; return how long until the server answered, and its whole answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=hold_s + 30)
    try:
        sock.sendall(data)
        started = time.monotonic()
        answer, answered_at = b"", None
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answered_at = answered_at or time.monotonic()
            answer += chunk
            head, sep, body = answer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if sep and length is not None and len(body) >= length:
                break
        return (answered_at or time.monotonic()) - started, answer
    finally:
        sock.close()


def store(stack) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=stack.store_port, socket_timeout=5)


def router_ports(stack) -> list[int]:
    """The router replicas' own ports, as HAProxy balances over them (from its configuration)."""
    import re

    from govllm.runtime_env import haproxy_dir

    configs = list(haproxy_dir(stack.state_dir / "run").glob("*/haproxy.cfg"))
    assert configs, "no HAProxy config"
    return [int(p) for p in re.findall(r"server SERVE_REPLICA_\S+ 127\.0\.0\.1:(\d+)", configs[0].read_text())]


def routers_up(stack) -> int:
    """Router replicas HAProxy has in rotation now (its stats page, CSV, on 127.0.0.1)."""
    import csv
    import io
    import re

    import httpx

    from govllm.runtime_env import haproxy_dir

    configs = list(haproxy_dir(stack.state_dir / "run").glob("*/haproxy.cfg"))
    if not configs:
        return 0
    stats = configs[0].read_text().split("listen stats", 1)[1]
    port = int(re.search(r"bind 127\.0\.0\.1:(\d+)", stats).group(1))
    uri = re.search(r"stats uri (\S+)", stats).group(1)
    try:
        text = httpx.get(f"http://127.0.0.1:{port}{uri};csv", timeout=5).text
    except httpx.HTTPError:
        return 0
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return sum(1 for row in rows if row["pxname"].startswith("http-")
               and row["svname"] not in ("FRONTEND", "BACKEND") and row["status"].startswith("UP"))


def wait_until(predicate, *, timeout_s: float, interval_s: float = 0.5, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value (returned) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not reached within {timeout_s:g} s (last: {last!r})")
