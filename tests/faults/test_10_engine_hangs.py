"""An engine that stops answering (SIGSTOP; vLLM's own health check still passes): the stream is
cut after the idle deadline with an error the client can read, billed for what was delivered; a
non-streamed request waiting on it is answered 503 once the replica reports the stall; the replica
leaves rotation and aliases are served by another model; it is readmitted when it answers again."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.faults.clients import stream, wait_until
from tests.faults.conftest import WORKHORSE
from tests.faults.invariants import ledger_reaches, ledger_tokens, records_for

pytestmark = pytest.mark.faults

TENANT = "fault-bill"


def test_hung_engine_is_cut_off_billed_exactly_and_routed_around(fault_stack):
    key, _ = fault_stack.new_key(TENANT, "hang")
    before = ledger_tokens(fault_stack, TENANT)
    engine = fault_stack.engine_pid(WORKHORSE)
    idle = fault_stack.spec["router"]["stream_idle_timeout_s"]
    body = {"model": WORKHORSE, "max_tokens": 1800, "min_tokens": 1800, "ignore_eos": True,
            "messages": [{"role": "user", "content": "停止試験"}]}
    streaming, result = threading.Event(), {}

    def on_event(got):
        if len(got.events) == 20:
            streaming.set()

    client = threading.Thread(target=lambda: result.update(got=stream(
        fault_stack.port, body, {"Authorization": f"Bearer {key}", "x-request-id": "hang-1"},
        on_event=on_event)))
    client.start()
    assert streaming.wait(30)
    os.kill(engine, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # a non-streamed request waiting on the hung engine is cut short once the replica reports
        # its engine stalled (engine_stall_s), not left until request_timeout_s
        waited = time.monotonic()
        direct = httpx.post(fault_stack.base_url + "/v1/chat/completions", timeout=60,
                            headers={"Authorization": f"Bearer {fault_stack.api_key}"},
                            json={"model": WORKHORSE, "max_tokens": 2,
                                  "messages": [{"role": "user", "content": "待機"}]})
        waited = time.monotonic() - waited
        assert direct.status_code == 503 and direct.headers["retry-after"].isdigit(), direct.text
        stall = fault_stack.spec["router"]["engine_stall_s"]
        assert waited < stall + 8, waited
        client.join(idle + 20)
        got = result["got"]
        cut_after = time.monotonic() - stopped
        assert got.errors() and got.errors()[-1]["code"] == "upstream_timeout", got.events[-2:]
        assert idle - 0.5 <= cut_after <= idle + 5, cut_after
        # the alias skips the hung model: at most the first request waits for the first-byte deadline
        auth = {"Authorization": f"Bearer {fault_stack.api_key}"}
        ask = {"model": "default", "max_tokens": 2, "messages": [{"role": "user", "content": "迂回"}]}
        answers = [httpx.post(fault_stack.base_url + "/v1/chat/completions", json=ask, headers=auth,
                              timeout=30) for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert {a.headers["x-govllm-model"] for a in answers} == {"tiny-qwen2-ja"}
    finally:
        os.kill(engine, signal.SIGCONT)
    record = records_for(fault_stack, TENANT, {"hang-1"})["hang-1"][0]
    assert record["status"] == 504 and record["error_code"] == "upstream_timeout"
    # the client read everything the router sent, so billed == received, to the token
    assert record["usage"]["completion_tokens"] == got.completion_tokens > 0
    assert record["usage"]["prompt_tokens"] == got.prompt_tokens
    ledger_reaches(fault_stack, TENANT, before + record["usage"]["total_tokens"])
    # readmitted once its ejection time is over and it answers again
    wait_until(lambda: httpx.post(fault_stack.base_url + "/v1/chat/completions", timeout=30,
                                  headers={"Authorization": f"Bearer {fault_stack.api_key}"},
                                  json={"model": "default", "max_tokens": 2,
                                        "messages": [{"role": "user", "content": "復帰"}]}
                                  ).headers.get("x-govllm-model") == WORKHORSE,
               timeout_s=60, what="hung engine back in rotation")
