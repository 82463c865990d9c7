"""Fair admission through the real stack: a saturated model serves the most important class
first, a request may lower its class but not raise it, and a flooding tenant is refused (429)
while the others queue and are served.

One router replica is addressed directly (its port from HAProxy's config), so every request
of the test meets the same admission gate: 2 slots and 1 queued request per priority class
on this model (max_ongoing_requests 4 and max_queued_requests 2, shared by 2 routers). The
flood's streams hold both slots until the test closes one; the order in which the waiting
requests then get their first token is the assertion, not any time.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import openai
import pytest

from govllm.runtime_env import haproxy_dir
from tests.faults.clients import wait_until
from tests.faults.conftest import FLOODED

pytestmark = pytest.mark.faults

HOLD_TOKENS = 1900  # the flood's streams outlast the test unless it closes them (max_model_len 2048)
SHORT_TOKENS = 4


def _router_ports(stack) -> list[int]:
    """The router replicas' own ports, as HAProxy balances over them."""
    configs = list(haproxy_dir(stack.state_dir / "run").glob("*/haproxy.cfg"))
    assert configs, "no HAProxy config"
    return [int(p) for p in re.findall(r"server SERVE_REPLICA_\S+ 127\.0\.0\.1:(\d+)", configs[0].read_text())]


class Request(threading.Thread):
    """One streamed chat request through the openai client; records status, class and first token."""

    def __init__(self, port: int, key: str, tokens: int, priority: str | None = None,
                 read_pause_s: float = 0.0):
        super().__init__(daemon=True)
        self.read_pause_s = read_pause_s
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
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=FLOODED, messages=[{"role": "user", "content": "公平 順番"}], stream=True,
                max_tokens=self.tokens, extra_body={"min_tokens": self.tokens, "ignore_eos": True},
                extra_headers=headers)
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
                if self.closed.is_set():
                    break
                time.sleep(self.read_pause_s)
        except openai.APIError:
            pass
        finally:
            self.stream.close()

    def close(self) -> None:
        """Disconnect (the router releases the slot when the next chunk fails to send)."""
        self.closed.set()


def _sees_two_slots(port: int) -> bool:
    """The router sizes its slots from the registry's view: 1 replica and 2 routers give 2 slots
    (a router that counts 1 live router, after a slow heartbeat on a loaded host, has 4)."""
    try:
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False
    return ready.get("routers") == 2 and ready["models"][FLOODED]["ready_replicas"] == 1


@pytest.mark.xfail(strict=False, reason=(
    "its premise is timing: the flood's two streams must still hold both slots when the next six "
    "requests arrive; on a quiet host the tiny model writes its 1900 tokens faster than that "
    "(it passed on a loaded one), and a slow reader does not hold the slot (the socket buffers "
    "take the whole answer). The discipline is tested exactly in tests/unit/test_fair_queue.py "
    "and test_admission.py; a way to hold a slot that does not depend on speed is open."))
def test_the_most_important_class_goes_first_and_a_flood_is_refused(fault_stack):
    port = _router_ports(fault_stack)[0]
    wait_until(lambda: _sees_two_slots(port), timeout_s=60, interval_s=0.5,
               what="the router counting 2 routers and 1 replica (2 slots)")
    flood_key, _ = fault_stack.new_key("fault-flood", "fair-flood")  # municipality: class api
    quiet_key, _ = fault_stack.new_key("fault-quiet", "fair-quiet")  # municipality: class api
    staff_key, _ = fault_stack.new_key("fault-agency", "fair-staff")  # agency: class interactive

    # the holders read slowly (it does not hold the slot once the socket buffers take the answer)
    holders = [Request(port, flood_key, HOLD_TOKENS, read_pause_s=0.02) for _ in range(2)]
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
        batch = Request(port, staff_key, SHORT_TOKENS, priority="batch")  # lowered by the header
        raised = Request(port, quiet_key, SHORT_TOKENS, priority="interactive")  # capped at api
        staff = Request(port, staff_key, SHORT_TOKENS)  # interactive
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
    assert staff.first_token_at < raised.first_token_at < batch.first_token_at


def test_an_unknown_priority_class_is_a_clear_400(fault_stack):
    client = openai.OpenAI(base_url=fault_stack.base_url + "/v1", api_key=fault_stack.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=FLOODED, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=1, extra_headers={"x-govllm-priority": "urgent"})
    assert bad.value.body["code"] == "invalid_priority" and "interactive, api, batch" in bad.value.body["message"]
