"""The shared store (Redis) killed or stopped mid-traffic: budgets fail closed, `govllm serve`
restarts it, deferred settlements are replayed, and the ledger still equals what was delivered."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.faults.clients import stream, wait_until
from tests.faults.conftest import WORKHORSE
from tests.faults.invariants import ledger_reaches, ledger_tokens, open_reservations
from tests.servers import paused

pytestmark = pytest.mark.faults

TENANT = "fault-store"


def ask(stack, key: str, tokens: int = 6) -> httpx.Response:
    return httpx.post(stack.base_url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": WORKHORSE, "max_tokens": tokens, "min_tokens": tokens,
                            "ignore_eos": True, "messages": [{"role": "user", "content": "障害"}]})


def test_killed_store_is_restarted_and_budgets_fail_closed_meanwhile(fault_stack):
    key, _ = fault_stack.new_key(TENANT, "kill")
    before = ledger_tokens(fault_stack, TENANT)
    delivered, outcomes, stop = [], [], threading.Event()

    def traffic():
        while not stop.is_set():
            resp = ask(fault_stack, key)
            outcomes.append((time.monotonic(), resp.status_code, resp.json().get("error", {}).get("code")))
            if resp.status_code == 200:
                delivered.append(resp.json()["usage"]["total_tokens"])

    worker = threading.Thread(target=traffic)
    worker.start()
    time.sleep(2)
    old_pid = fault_stack.store_pid
    os.kill(old_pid, signal.SIGKILL)
    killed = time.monotonic()
    new_pid = wait_until(lambda: _restarted(fault_stack, old_pid), timeout_s=15, interval_s=0.2,
                         what="embedded Redis restarted")
    restarted = time.monotonic()
    wait_until(lambda: any(t > restarted and s == 200 for t, s, _ in outcomes), timeout_s=15,
               what="budgeted requests served again")
    time.sleep(2)
    stop.set()
    worker.join()
    assert new_pid != old_pid
    refusals = {code for _, status, code in outcomes if status != 200}
    assert refusals <= {"quota_store_unavailable", "key_store_unavailable"}, refusals
    assert all(status in (200, 503) for _, status, _ in outcomes)
    print(f"\nstore restarted {restarted - killed:.2f} s after SIGKILL; "
          f"{sum(1 for _, s, _ in outcomes if s == 503)} requests refused meanwhile")
    ledger_reaches(fault_stack, TENANT, before + sum(delivered))
    assert open_reservations(fault_stack, TENANT) == 0


def _restarted(stack, old_pid: int) -> int | None:
    try:
        pid = stack.store_pid
    except RuntimeError:
        return None
    return pid if pid != old_pid else None


def test_settlement_deferred_while_the_store_is_stopped_is_replayed(fault_stack):
    """A stream admitted before the store stopped finishes while it is stopped: its settlement is
    deferred in the router and replayed when the store answers again, to the exact token."""
    key, _ = fault_stack.new_key(TENANT, "defer")
    before = ledger_tokens(fault_stack, TENANT)
    tokens = 1800
    body = {"model": WORKHORSE, "max_tokens": tokens, "min_tokens": tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": "長い回答"}]}
    headers = {"Authorization": f"Bearer {key}"}
    with paused(fault_stack.store_pid):  # a budgeted tenant is not admitted without the store
        refused = stream(fault_stack.port, body, headers)
    assert refused.status == 503 and refused.error_code == "quota_store_unavailable"

    thread, result = _streaming(fault_stack, body, headers)
    with paused(fault_stack.store_pid):
        thread.join()  # finishes while the store is stopped: settlement deferred
        got = result["got"]
        assert got.status == 200 and got.done and got.completion_tokens == tokens
        assert ledger_tokens_unreachable(fault_stack)
    ledger_reaches(fault_stack, TENANT, before + got.tokens)
    assert open_reservations(fault_stack, TENANT) == 0


def _streaming(stack, body: dict, headers: dict) -> tuple[threading.Thread, dict]:
    """A stream admitted and running once the store answers again. The store was stopped a
    moment ago: an admission whose answer is still lost is refused with 503 (fail closed), and
    the client retries as Retry-After says, within a bound."""
    deadline = time.monotonic() + 30
    while True:
        result, streaming = {}, threading.Event()
        thread = threading.Thread(target=lambda result=result, streaming=streaming: result.update(
            got=stream(stack.port, body, headers, on_event=lambda _: streaming.set())))
        thread.start()
        while not streaming.wait(0.2) and thread.is_alive() and time.monotonic() < deadline:
            pass
        if streaming.is_set():
            return thread, result
        thread.join(30)
        got = result.get("got")
        refused = got is not None and got.status == 503 and got.error_code == "quota_store_unavailable"
        assert refused and time.monotonic() < deadline, (
            "not admitted and streaming once the store answered again: "
            f"{None if got is None else (got.status, got.error_code, got.body[:300])}")
        time.sleep(1)


def ledger_tokens_unreachable(stack) -> bool:
    """While the store is stopped the CLI cannot read the ledger either (sanity check of the fault)."""
    try:
        stack.cli("usage", "--tenant", TENANT, "--json", timeout=20)
    except Exception:
        return True
    return False
