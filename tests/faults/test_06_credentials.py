"""Credentials under faults: a malformed key record, a store that cannot confirm revocations."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.clients import store, wait_until
from tests.faults.conftest import WORKHORSE
from tests.servers import paused

pytestmark = pytest.mark.faults

ASK = {"model": WORKHORSE, "max_tokens": 2, "messages": [{"role": "user", "content": "鍵"}]}


def call(stack, key: str) -> httpx.Response:
    return httpx.post(stack.base_url + "/v1/chat/completions", json=ASK,
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def statuses(stack, key: str, n: int = 12) -> list[int]:
    """n calls spread over both router replicas (HAProxy balances them)."""
    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(lambda _: call(stack, key).status_code, range(n)))


def _keys_hash(r) -> bytes:
    candidates = [k for k in r.scan_iter(match="*keys*") if r.type(k) == b"hash"]
    assert len(candidates) == 1, candidates
    return candidates[0]


def test_a_malformed_key_record_is_skipped_and_revocation_still_works(fault_stack):
    key, key_id = fault_stack.new_key("fault-agency", "keeps-working")
    victim, victim_id = fault_stack.new_key("fault-agency", "to-revoke")
    r = store(fault_stack)
    r.hset(_keys_hash(r), "badbadbadbad", b"{not a key record")
    stranger, _ = fault_stack.new_key("fault-agency", "created-after")  # a change makes every cache reload
    time.sleep(1)
    assert set(statuses(fault_stack, key)) == {200}
    assert set(statuses(fault_stack, stranger)) == {200}
    fault_stack.cli("keys", "revoke", victim_id)
    started = time.monotonic()
    wait_until(lambda: set(statuses(fault_stack, victim)) == {401}, timeout_s=5, interval_s=0.2,
               what="revocation on every router")
    print(f"\nrevocation effective on every router after {time.monotonic() - started:.2f} s")
    r.hdel(_keys_hash(r), "badbadbadbad")


def test_keys_stop_working_when_routers_cannot_confirm_them(fault_stack):
    """A router that cannot reach the store for key_staleness_s refuses API keys (503) rather than
    honour a key that may have been revoked meanwhile; it recovers as soon as the store answers."""
    staleness = fault_stack.spec["auth"]["key_staleness_s"]
    assert set(statuses(fault_stack, fault_stack.api_key, 4)) == {200}
    with paused(fault_stack.store_pid):
        time.sleep(staleness + 1.5)
        refused = call(fault_stack, fault_stack.api_key)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "key_store_unavailable"
    assert refused.headers["retry-after"].isdigit()
    started = time.monotonic()
    wait_until(lambda: set(statuses(fault_stack, fault_stack.api_key, 6)) == {200}, timeout_s=15,
               interval_s=0.5, what="keys accepted again")
    print(f"\nkeys accepted again {time.monotonic() - started:.2f} s after the store returned")
