"""Clients that trickle headers or bodies, or stop reading an answer, are cut off by deadlines,
and do not hold up others."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.clients import router_ports, stream, trickle
from tests.faults.conftest import WORKHORSE
from tests.faults.invariants import engine_idle, ledger_reaches, ledger_tokens, records_for

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


def test_a_client_that_stops_reading_frees_its_slot_and_is_billed_what_was_written(fault_stack):
    """A client that keeps its connection but reads nothing after the first event: once the
    buffers between it and the router are full, the router waits `client_send_timeout_s`, sends
    nothing more, stops the engine and ends the request, recorded 408 `client_read_timeout`,
    while the client is still connected. When the client reads again it gets exactly what was
    written, and that is what is billed.

    A router replica is addressed directly: through HAProxy two more sockets' kernel buffers are
    in between, and this answer (16 choices of 1900 tokens) finished into them while the client
    read nothing (it frees its slot that way too); between a router and its client alone, these
    16 choices outgrow the buffers."""
    tenant, choices, tokens = "fault-bill", 16, 1900
    key, _ = fault_stack.new_key(tenant, "stalled-reader")
    ledger_before = ledger_tokens(fault_stack, tenant)
    body = {"model": WORKHORSE, "n": choices, "max_tokens": tokens, "min_tokens": tokens,
            "ignore_eos": True, "messages": [{"role": "user", "content": "読まない"}]}
    paused, resume, got = threading.Event(), threading.Event(), []

    def stop_reading(received) -> None:
        if len(received.events) == 1:
            paused.set()
            resume.wait(300)

    port = router_ports(fault_stack)[0]
    reader = threading.Thread(target=lambda: got.append(stream(
        port, body, {"Authorization": f"Bearer {key}", "x-request-id": "stalled-reader"},
        on_event=stop_reading, timeout_s=300)))
    reader.start()
    try:
        assert paused.wait(60), "the stream did not start"
        started = time.monotonic()
        (record,) = records_for(fault_stack, tenant, {"stalled-reader"}, timeout_s=240)["stalled-reader"]
        ended_after = time.monotonic() - started
        assert not resume.is_set() and reader.is_alive()  # ended while the client was connected
    finally:
        resume.set()
        reader.join(120)
    (received,) = got
    assert (record["status"], record["error_code"]) == (408, "client_read_timeout"), record
    print(f"\nstalled reader: request ended {ended_after:.0f} s after the client stopped reading")
    # what the client got once it read again, per choice (each event carries its choice's count)
    per_choice: dict[int, int] = {}
    for event in received.events:
        for choice in event.get("choices") or []:
            per_choice[choice["index"]] = max(per_choice.get(choice["index"], 0),
                                              event["usage"]["completion_tokens"])
    written = sum(per_choice.values())
    assert received.closed_by_server and not received.done
    assert 0 < written < choices * tokens  # the engine was stopped early
    assert record["usage"]["completion_tokens"] == written, (record["usage"], written)
    ledger_reaches(fault_stack, tenant, ledger_before + record["usage"]["total_tokens"])
    engine_idle(fault_stack, WORKHORSE)
