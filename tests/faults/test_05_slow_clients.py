"""Clients that trickle headers or bodies are cut off by deadlines, and do not hold up others."""

from __future__ import annotations

import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.clients import trickle
from tests.faults.conftest import WORKHORSE
from tests.faults.invariants import records_for

pytestmark = pytest.mark.faults


def test_trickled_headers_get_408_at_the_header_deadline(fault_stack):
    limit = fault_stack.spec["router"]["request_header_timeout_s"]
    waited, answer = trickle(fault_stack.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n",
                             hold_s=limit)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert limit - 0.5 <= waited <= limit + 3, waited


def test_trickled_body_gets_an_openai_408_and_an_audit_record(fault_stack):
    limit = fault_stack.spec["router"]["request_body_timeout_s"]
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {fault_stack.api_key}\r\nx-request-id: slow-body-1\r\n"
            f"Content-Length: 4000\r\n\r\n").encode()
    waited, answer = trickle(fault_stack.port, head + b'{"model": "', hold_s=limit)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b'"code": "request_timeout"' in rest
    assert limit - 0.5 <= waited <= limit + 3, waited
    record = records_for(fault_stack, "dev-local", {"slow-body-1"})["slow-body-1"]
    assert len(record) == 1 and record[0]["status"] == 408


def test_a_hundred_slow_clients_do_not_hold_up_a_normal_request(fault_stack):
    body = {"model": WORKHORSE, "max_tokens": 4, "messages": [{"role": "user", "content": "普通"}]}
    auth = {"Authorization": f"Bearer {fault_stack.api_key}"}

    def timed() -> float:
        started = time.monotonic()
        assert httpx.post(fault_stack.base_url + "/v1/chat/completions", json=body, headers=auth,
                          timeout=30).status_code == 200
        return time.monotonic() - started

    quiet = [timed() for _ in range(5)]
    sockets = []
    try:
        for _ in range(100):  # each holds a connection with half a request
            s = socket.create_connection(("127.0.0.1", fault_stack.port), timeout=10)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
            sockets.append(s)
        with ThreadPoolExecutor(1) as pool:
            busy = list(pool.map(lambda _: timed(), range(5)))
    finally:
        for s in sockets:
            s.close()
    ratio = statistics.median(busy) / statistics.median(quiet)
    print(f"\nslow clients: normal request latency with 100 trickling clients / without = {ratio:.2f}")
    assert ratio < 3, (quiet, busy)
