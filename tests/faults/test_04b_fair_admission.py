"""Fair admission through the real stack: a saturated model serves the most important class
first, a request may lower its class but not raise it, and a flooding tenant is refused (429)
while the others queue and are served.

One router replica is addressed directly (its port from HAProxy's config), so every request
of the test meets the same admission gate: 2 slots and 1 queued request per priority class
on this model (max_ongoing_requests 4 and max_queued_requests 2, shared by 2 routers). The
flood's streams hold both slots until the test closes one; the order in which the router then
serves the waiting requests (their first bytes, from the audit records) is the assertion, not
any time.

The flood holds its slots by bytes, not by speed: each of its streams asks for 16 long
choices (megabytes of events) and stops reading after its first token, so the router's send
to it blocks once the socket buffers are full, and the slot stays held until the test closes
the stream or `client_send_timeout_s` passes (8 s in the fault stack), however fast the host
generates.
"""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import openai
import pytest

from tests.faults.clients import router_ports, wait_until
from tests.faults.conftest import FLOODED
from tests.faults.invariants import records_for

pytestmark = pytest.mark.faults

HOLD_TOKENS = 1900  # x HOLD_CHOICES: far more than the socket buffers between router and client
HOLD_CHOICES = 16  # the most the router accepts
SHORT_TOKENS = 4


class Request(threading.Thread):
    """One streamed chat request through the openai client; records status, class and first token."""

    def __init__(self, port: int, key: str, tokens: int, priority: str | None = None,
                 hold: bool = False, cid: str | None = None):
        super().__init__(daemon=True)
        self.cid = cid
        self.hold = hold  # stop reading after the first token, until closed
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                    max_retries=0, timeout=60)
        self.tokens, self.priority = tokens, priority
        self.status: int | None = None
        self.code: str | None = None
        self.retry_after: str | None = None
        self.served_class: str | None = None
        self.first_token_at: float | None = None
        self.stream = None
        self.closed = threading.Event()

    def run(self) -> None:
        headers = {"x-govllm-priority": self.priority} if self.priority else {}
        if self.cid:
            headers["x-request-id"] = self.cid
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=FLOODED, messages=[{"role": "user", "content": "公平 順番"}], stream=True,
                max_tokens=self.tokens, extra_body={"min_tokens": self.tokens, "ignore_eos": True},
                n=HOLD_CHOICES if self.hold else 1, extra_headers=headers)
        except openai.APIStatusError as exc:
            self.status, self.code = exc.status_code, (exc.body or {}).get("code")
            self.retry_after = exc.response.headers.get("retry-after")
            return
        self.status, self.served_class = raw.http_response.status_code, raw.headers.get("x-govllm-priority")
        self.stream = raw.parse()
        try:
            for _ in self.stream:
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                if self.hold:
                    self.closed.wait(120)  # read nothing more: the router's send to us blocks
                if self.closed.is_set():
                    break
        except openai.APIError:
            pass
        finally:
            self.stream.close()

    def close(self) -> None:
        """Disconnect (the router's blocked send fails, and it releases the slot)."""
        self.closed.set()


def _sees_two_slots(port: int) -> bool:
    """The router sizes its slots from the registry's view: 1 replica and 2 routers give 2 slots
    (a router that counts 1 live router, after a slow heartbeat on a loaded host, has 4)."""
    try:
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False
    return ready.get("routers") == 2 and ready["models"][FLOODED]["ready_replicas"] == 1


def test_the_most_important_class_goes_first_and_a_flood_is_refused(fault_stack):
    port = router_ports(fault_stack)[0]
    wait_until(lambda: _sees_two_slots(port), timeout_s=60, interval_s=0.5,
               what="the router counting 2 routers and 1 replica (2 slots)")
    flood_key, _ = fault_stack.new_key("fault-flood", "fair-flood")  # municipality: class api
    quiet_key, _ = fault_stack.new_key("fault-quiet", "fair-quiet")  # municipality: class api
    staff_key, _ = fault_stack.new_key("fault-agency", "fair-staff")  # agency: class interactive

    holders = [Request(port, flood_key, HOLD_TOKENS, hold=True) for _ in range(2)]
    for r in holders:
        r.start()
    wait_until(lambda: all(r.first_token_at for r in holders), timeout_s=60, interval_s=0.05,
               what="the flood holding both slots")
    try:
        refused = [Request(port, flood_key, SHORT_TOKENS) for _ in range(3)]
        for r in refused:
            r.start()
        for r in refused:
            r.join(30)
        # the flood already holds its share of the model (both slots): it may not queue more
        assert [(r.status, r.code) for r in refused] == [(429, "tenant_share_exceeded")] * 3
        assert all(r.retry_after and r.retry_after.isdigit() for r in refused)

        # arrivals, least important first: FIFO would serve them in this order
        run = uuid.uuid4().hex[:8]
        batch = Request(port, staff_key, SHORT_TOKENS, priority="batch",  # lowered by the header
                        cid=f"fair-batch-{run}")
        raised = Request(port, quiet_key, SHORT_TOKENS, priority="interactive",  # capped at api
                         cid=f"fair-raised-{run}")
        staff = Request(port, staff_key, SHORT_TOKENS, cid=f"fair-staff-{run}")  # interactive
        for r in (batch, raised, staff):
            r.start()
            time.sleep(0.2)  # each one queued before the next arrives
        assert not any(r.status for r in (batch, raised, staff))  # all three wait for a slot
        holders[0].close()  # one slot frees; the short requests then free it for each other in turn
        for r in (staff, raised, batch):
            r.join(30)
    finally:
        for r in holders:
            r.close()
        for r in holders:
            r.join(30)
    assert [(r.status, r.served_class) for r in (staff, raised, batch)] == [
        (200, "interactive"), (200, "api"), (200, "batch")]
    # the order the router served them in: when each one's first byte left the router, from its
    # audit record (arrival time + first-byte delay). Not the clients' own clocks: three client
    # threads beside a busy engine on 2 cores saw a first token 100 ms after the router sent it.
    records = {**records_for(fault_stack, "fault-agency", {staff.cid, batch.cid}),
               **records_for(fault_stack, "fault-quiet", {raised.cid})}

    def first_byte(r: Request) -> float:
        (record,) = records[r.cid]
        return record["time"] + record["timings_ms"]["first_byte"] / 1000

    assert first_byte(staff) < first_byte(raised) < first_byte(batch), {
        r.cid: first_byte(r) for r in (staff, raised, batch)}


def test_an_unknown_priority_class_is_a_clear_400(fault_stack):
    client = openai.OpenAI(base_url=fault_stack.base_url + "/v1", api_key=fault_stack.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=FLOODED, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=1, extra_headers={"x-govllm-priority": "urgent"})
    assert bad.value.body["code"] == "invalid_priority" and "interactive, api, batch" in bad.value.body["message"]
