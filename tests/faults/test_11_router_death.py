"""A router replica killed with SIGKILL mid-stream: its prompts were already on the trail (begin
records), `govllm audit verify` names exactly the requests it never closed, and the other router
keeps serving without a failed request."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.clients import streams_in_flight, wait_until
from tests.faults.conftest import WORKHORSE
from tests.faults.invariants import records_for

pytestmark = pytest.mark.faults

STREAMS = 8


def test_killed_router_leaves_begun_requests_that_verify_names(fault_stack):
    routers = fault_stack.replica_pids("router")
    assert len(routers) == 2, routers
    key, _ = fault_stack.new_key("fault-agency", "router-death")
    body = {"model": WORKHORSE, "max_tokens": 1800, "min_tokens": 1800, "ignore_eos": True,
            "messages": [{"role": "user", "content": "経路障害"}]}
    threads, results = streams_in_flight(fault_stack.port, body, {
        f"router-death-{i}": {"Authorization": f"Bearer {key}", "x-request-id": f"router-death-{i}"}
        for i in range(STREAMS)})
    victim = routers[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()

    # meanwhile, new requests keep being answered (HAProxy moves them to the other router)
    def ask(i: int) -> int:
        return httpx.post(fault_stack.base_url + "/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {fault_stack.api_key}"},
                          json={"model": WORKHORSE, "max_tokens": 2,
                                "messages": [{"role": "user", "content": f"継続 {i}"}]}).status_code

    with ThreadPoolExecutor(2) as pool:
        during = list(pool.map(ask, range(30)))
    for t in threads:
        t.join(120)
    assert during == [200] * len(during), during

    cut = {cid for cid, got in results.items() if not got.done}
    finished = set(results) - cut
    assert cut and finished, "both routers should have carried some of the streams"
    # Ray restarts the killed replica; the next uploader seals and uploads the dead one's spool
    wait_until(lambda: len(fault_stack.replica_pids("router")) == 2, timeout_s=60,
               what="router replica restarted")
    print(f"\nrouter replica back {time.monotonic() - killed:.1f} s after SIGKILL")
    records = records_for(fault_stack, "fault-agency", finished, timeout_s=120)
    assert all(len(records[cid]) == 1 and records[cid][0]["status"] == 200 for cid in finished)

    def unclosed():
        code, report = fault_stack.audit_verify()
        ids = {u.get("client_request_id") or u["request_id"] for u in report.get("unclosed", [])}
        return (code, report, ids) if cut <= _client_ids(fault_stack, ids) else None

    code, report, ids = wait_until(unclosed, timeout_s=120, interval_s=3, what="begun requests reported")
    assert code == 3 and report["problems"] == [], report
    assert _client_ids(fault_stack, ids) == cut
    exported = {r["client_request_id"]: r for r in fault_stack.audit_export("fault-agency")
                if r.get("client_request_id") in cut}
    assert all(not r["closed"] and r["prompt"] for r in exported.values())


def _client_ids(stack, ids: set[str]) -> set[str]:
    """Unclosed entries name server request ids; map them to the clients' ids through the export."""
    by_server = {r["request_id"]: r.get("client_request_id") for r in stack.audit_export("fault-agency")}
    return {by_server.get(i, i) for i in ids}
