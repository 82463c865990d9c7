"""Vendor-hosted endpoints behind the same front door (issue 12), against a real vendor server.

The vendor is vLLM's own OpenAI server started directly with an API key, behind TLS from a
test CA, serving under its own model name (tests/vendor/server.py); its middleware records
every header it receives. The stack has two router replicas, so the contract's limits are
checked across routers. The last test kills the vendor and brings it back.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from tests.faults.clients import stream, wait_until
from tests.faults.conftest import (
    FLOODED,
    VENDOR,
    VENDOR_BADKEY,
    VENDOR_BADKEY_ENV,
    VENDOR_METERED,
    VENDOR_PRICE,
    VENDOR_RPM,
    VENDOR_TPM,
    WORKHORSE,
)
from tests.faults.invariants import records_for

pytestmark = pytest.mark.faults

TENANT = "fault-agency"  # may send 機密性2


def chat(stack, key: str, model: str, *, level: int = 1, max_tokens: int = 8, cid: str | None = None,
         **extra) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "x-confidentiality": str(level)}
    if cid:
        headers["x-request-id"] = cid
    return httpx.post(stack.base_url + "/v1/chat/completions", timeout=60, headers=headers,
                      json={"model": model, "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": "申請書の要点を教えてください。"}], **extra})


def readyz(stack) -> dict:
    return httpx.get(stack.base_url + "/readyz", timeout=10).json()


def test_chat_and_stream_reach_the_vendor_with_its_key_only(fault_stack, vendor):
    key, _ = fault_stack.new_key(TENANT, "vendor-headers")
    client = OpenAI(base_url=fault_stack.base_url + "/v1", api_key=key, max_retries=0, timeout=60,
                    default_headers={"x-request-id": "vendor-client-1", "x-client-secret": "mine"})
    before = len(vendor.received())
    answer = client.chat.completions.create(model=VENDOR, max_tokens=6,
                                            messages=[{"role": "user", "content": "こんにちは"}])
    assert answer.choices[0].message.content is not None
    assert answer.model == VENDOR  # named as the client knows it, not by the vendor's name
    assert answer.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=VENDOR, max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "こんにちは"}]))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])  # per-chunk usage is not invented for the client
    assert {c.model for c in chunks} == {VENDOR}
    received = [r for r in vendor.received()[before:] if r["path"] == "/v1/chat/completions"]
    assert len(received) == 2
    for request in received:
        headers = request["headers"]
        assert headers["authorization"] == f"Bearer {vendor.api_key}"
        seen = json.dumps(headers)
        assert key not in seen and "x-client-secret" not in seen and "mine" not in seen
        assert fault_stack.data_plane_token not in seen
        assert "vendor-client-1" not in seen  # the router's own request id goes upstream instead


def test_usage_is_billed_costed_and_audited_with_the_vendor_terms(fault_stack, vendor):
    tenant = "fault-bill"
    key, _ = fault_stack.new_key(tenant, "vendor-bill")
    before = int(fault_stack.usage(tenant)["models"].get(VENDOR, {}).get("completion_tokens", 0))
    before_prompt = int(fault_stack.usage(tenant)["models"].get(VENDOR, {}).get("prompt_tokens", 0))
    resp = chat(fault_stack, key, VENDOR, max_tokens=12, cid="vendor-bill-1")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-govllm-model"] == VENDOR
    usage = resp.json()["usage"]
    got = stream(fault_stack.port, {"model": VENDOR, "max_tokens": 12,
                                    "messages": [{"role": "user", "content": "ストリーム"}]},
                 {"Authorization": f"Bearer {key}", "x-request-id": "vendor-bill-2"})
    assert got.status == 200 and got.done
    expected_prompt = before_prompt + usage["prompt_tokens"] + got.prompt_tokens
    expected_completion = before + usage["completion_tokens"] + got.completion_tokens

    def billed():
        row = fault_stack.usage(tenant)["models"].get(VENDOR, {})
        return (row.get("prompt_tokens"), row.get("completion_tokens")) == (expected_prompt, expected_completion)

    wait_until(billed, timeout_s=30, what="vendor usage in the ledger")
    row = fault_stack.usage(tenant)["models"][VENDOR]
    cost = (expected_prompt * VENDOR_PRICE["input_yen_per_million"]
            + expected_completion * VENDOR_PRICE["output_yen_per_million"]) / 1e6
    assert row["cost_yen"] == pytest.approx(round(cost, 2), abs=0.011)
    records = records_for(fault_stack, tenant, {"vendor-bill-1", "vendor-bill-2"})
    for (record,) in records.values():
        assert record["model_id"] == VENDOR
        assert record["vendor"]["provider"] == "試験ベンダー株式会社"
        assert record["vendor"]["contract"] == "TEST-2026-001"
        assert record["vendor"]["trains_on_inputs"] is False
        assert record["vendor"]["endpoint"] == vendor.base_url
        assert record["usage_estimated"] is False
        assert record["cost_yen"] == pytest.approx(
            (record["usage"]["prompt_tokens"] * VENDOR_PRICE["input_yen_per_million"]
             + record["usage"]["completion_tokens"] * VENDOR_PRICE["output_yen_per_million"]) / 1e6)


def test_models_and_readyz_show_the_vendor_endpoint(fault_stack, vendor):
    cards = {m["id"]: m for m in httpx.get(fault_stack.base_url + "/v1/models", timeout=10, headers={
        "Authorization": f"Bearer {fault_stack.api_key}"}).json()["data"]}
    assert cards[VENDOR]["source"] == "endpoint" and cards[WORKHORSE]["source"] == "self-hosted"
    assert cards[VENDOR]["provider"] == "試験ベンダー株式会社"
    assert cards[VENDOR]["endpoint_state"] == "closed"
    assert cards[VENDOR]["price_yen_per_million"] == {"input": 150.0, "output": 600.0}
    state = readyz(fault_stack)["vendor_endpoints"]
    assert state[VENDOR]["state"] == "closed" and state[VENDOR]["reason"] is None
    # its key is wrong: the health probe (which presents it) opened the circuit and says why
    assert state[VENDOR_BADKEY]["state"] in ("open", "half-open")
    assert "refused govllm's credential, HTTP 401" in state[VENDOR_BADKEY]["reason"]


def test_a_refused_vendor_credential_is_not_echoed_and_opens_the_circuit(fault_stack, vendor):
    import os

    resp = chat(fault_stack, fault_stack.api_key, VENDOR_BADKEY)
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["code"] == "model_unavailable" and "refused govllm's credential" in error["message"]
    assert os.environ[VENDOR_BADKEY_ENV] not in resp.text and vendor.api_key not in resp.text
    # the router that answered opened its circuit; /readyz (either router) eventually shows one open
    assert readyz(fault_stack)["status"] == "ready"  # a vendor outage never takes the router out


def test_contract_requests_per_minute_hold_across_both_routers(fault_stack, vendor):
    if time.time() % 60 > 45:  # keep the burst inside one minute window
        time.sleep(61 - time.time() % 60)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda i: chat(fault_stack, fault_stack.api_key, VENDOR_METERED,
                                                max_tokens=1), range(2 * VENDOR_RPM)))
    codes = [r.status_code for r in statuses]
    assert codes.count(200) == VENDOR_RPM, codes
    refused = [r for r in statuses if r.status_code == 429]
    assert len(refused) == VENDOR_RPM, [(r.status_code, r.text[:200]) for r in statuses if r.status_code != 200]
    for r in refused:
        assert r.json()["error"]["code"] == "vendor_rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60


def test_contract_tokens_per_minute_count_requests_in_flight(fault_stack, vendor):
    """Two long streams hold most of the minute's tokens (counted at their largest size), so a
    third is refused while they run, although nothing has been settled yet."""
    wait_until(lambda: chat(fault_stack, fault_stack.api_key, VENDOR_METERED, max_tokens=1).status_code
               == 200, timeout_s=70, interval_s=2, what="the metered vendor's next minute")
    # each counted at max_tokens plus its body's bytes: two fit in the minute, a third does not
    long = {"model": VENDOR_METERED, "max_tokens": VENDOR_TPM // 2 - 400, "ignore_eos": True,
            "messages": [{"role": "user", "content": "長文"}]}
    if time.time() % 60 > 40:  # the streams and the refused request share one minute window
        time.sleep(61 - time.time() % 60)
    results, started = [], [threading.Event(), threading.Event()]

    def one(flag: threading.Event) -> None:
        results.append(stream(fault_stack.port, long, {"Authorization": f"Bearer {fault_stack.api_key}"},
                              on_event=lambda got: flag.set()))
        flag.set()  # refused or finished: stop waiting either way

    threads = [threading.Thread(target=one, args=(flag,)) for flag in started]
    for t in threads:
        t.start()
    try:
        assert all(flag.wait(60) for flag in started)
        assert not results, [(r.status, r.body) for r in results]  # both still streaming
        third = chat(fault_stack, fault_stack.api_key, VENDOR_METERED, max_tokens=VENDOR_TPM // 2 - 400)
        assert third.status_code == 429, third.text
        assert third.json()["error"]["code"] == "vendor_rate_limited"
        assert "tokens per minute" in third.json()["error"]["message"]
    finally:
        for t in threads:
            t.join(timeout=180)
    assert [r.status for r in results] == [200, 200]


def test_vendor_killed_circuit_opens_alias_falls_back_within_policy_and_probes_close_it(fault_stack, vendor):
    key, _ = fault_stack.new_key(TENANT, "vendor-outage")
    assert chat(fault_stack, key, "plamo-first").headers["x-govllm-model"] == VENDOR
    vendor.kill()
    try:
        # level 1: the alias falls back to the self-hosted model, on both routers
        served = [chat(fault_stack, key, "plamo-first") for _ in range(6)]
        assert [r.status_code for r in served] == [200] * 6, [r.text for r in served]
        assert {r.headers["x-govllm-model"] for r in served} == {FLOODED}
        # level 2: the self-hosted fallback may not receive 機密性2, so the request is refused
        secret = chat(fault_stack, key, "plamo-first", level=2, cid="vendor-outage-level2")
        assert secret.status_code == 503, secret.text
        assert secret.json()["error"]["code"] == "model_unavailable"
        assert "retry-after" in secret.headers
        state = readyz(fault_stack)["vendor_endpoints"][VENDOR]
        assert state["state"] in ("open", "half-open") and state["reason"]
        (record,) = records_for(fault_stack, TENANT, {"vendor-outage-level2"})["vendor-outage-level2"]
        assert all(FLOODED not in attempt for attempt in record["attempts"]), record["attempts"]
    finally:
        vendor.start()
    vendor.wait_ready()
    started = time.monotonic()
    wait_until(lambda: all(chat(fault_stack, key, "plamo-first").headers.get("x-govllm-model") == VENDOR
                           for _ in range(4)), timeout_s=60, interval_s=1, what="circuit closed on both routers")
    print(f"\nvendor back in rotation {time.monotonic() - started:.1f} s after it answered again")
    assert readyz(fault_stack)["vendor_endpoints"][VENDOR]["state"] == "closed"
