"""A client that disconnects mid-stream aborts generation on the engine."""

from __future__ import annotations

import json
import socket
import time

import pytest

pytestmark = pytest.mark.integration

MODEL = "tiny-qwen2-ja"
MAX_TOKENS = 1900
TOKENS = "vllm:generation_tokens_total"
RUNNING = "vllm:num_requests_running"


def _settled(stack, name: str) -> float:
    """The engine's counter once it has stopped moving."""
    last = None
    for _ in range(30):
        value = stack.engine_metric(MODEL, name)
        if value == last:
            return value
        last = value
        time.sleep(1.0)
    return last


def _open_stream(stack, body: dict) -> tuple[socket.socket, bytes]:
    port = int(stack.base_url.rsplit(":", 1)[1])
    payload = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {stack.api_key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while received.count(b"data: ") < 4:
        chunk = s.recv(65536)
        assert chunk, "stream ended before it started"
        received += chunk
    return s, received


def test_disconnect_mid_stream_aborts_generation(stack):
    before = _settled(stack, TOKENS)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "長い文書を作成してください。"}],
        "max_tokens": MAX_TOKENS, "min_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True,
    }
    sock, received = _open_stream(stack, body)
    assert b" 200 " in received.split(b"\r\n", 1)[0]
    sock.close()  # the client goes away after a few tokens
    after = _settled(stack, TOKENS)
    assert _settled(stack, RUNNING) == 0
    generated = after - before
    assert 0 < generated < MAX_TOKENS / 2, (
        f"engine generated {generated} tokens after the client left; expected it to stop early"
    )


def test_control_full_stream_generates_every_token(stack):
    """The same measurement without a disconnect sees all tokens, so the test above can fail."""
    before = _settled(stack, TOKENS)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "短い文書"}],
        "max_tokens": 300, "min_tokens": 300, "ignore_eos": True, "stream": True,
    }
    sock, received = _open_stream(stack, body)
    while b"data: [DONE]" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sock.close()
    assert _settled(stack, TOKENS) - before == 300
