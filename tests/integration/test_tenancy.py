"""Tenancy through the running stack: keys, OIDC, confidentiality, quotas, audit, feedback."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.servers import paused

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
ASK = {"model": "tiny-llama-ja", "messages": [{"role": "user", "content": "議事録を要約してください"}], "max_tokens": 3}


def call(stack, key: str, body: dict | None = None, headers: dict | None = None, path: str = CHAT):
    h = {"Authorization": f"Bearer {key}", **(headers or {})}
    return httpx.post(stack.base_url + path, json=body or ASK, headers=h, timeout=60)


def new_key(stack, tenant: str, user: str = "app") -> tuple[str, str]:
    out = stack.cli("keys", "create", "--tenant", tenant, "--user", user, "--json")
    data = json.loads(out.stdout)
    return data["key"], data["key_id"]


def wait_minute_start():
    """Per-minute limits: do not let a test straddle a minute boundary."""
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)


def test_keys_cli_and_revocation_reach_every_router_at_once(stack):
    key, key_id = new_key(stack, "other-agency", "pipeline")
    assert call(stack, key).status_code == 200
    listed = json.loads(stack.cli("keys", "list", "--tenant", "other-agency", "--json").stdout)
    assert key_id in [k["key_id"] for k in listed] and all("digest" not in k for k in listed)
    stack.cli("keys", "revoke", key_id)
    time.sleep(0.5)
    # two router replicas behind HAProxy: every request, whichever replica it hits, is refused
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: call(stack, key).status_code, range(16)))
    assert statuses == [401] * 16
    assert stack.cli("keys", "revoke", "000000000000", check=False).returncode == 1


def test_rotate_issues_a_working_key_and_kills_the_old(stack):
    key, key_id = new_key(stack, "other-agency")
    rotated = json.loads(stack.cli("keys", "rotate", key_id, "--json").stdout)
    time.sleep(0.5)
    assert call(stack, rotated["key"]).status_code == 200
    assert call(stack, key).status_code == 401


def test_unknown_tenant_in_cli_is_refused(stack):
    out = stack.cli("keys", "create", "--tenant", "nobody", "--user", "x", check=False)
    assert out.returncode == 1 and "not declared" in out.stderr


def test_oidc_tokens(stack, outside):
    issuer = outside["issuer"]
    ok = call(stack, issuer.token(tenant="other-agency", user="tanaka@example.go.jp"))
    assert ok.status_code == 200
    for token, status, code in [
        (issuer.token(expires_in=-300), 401, "invalid_token"),
        (issuer.token(audience="not-govllm"), 401, "invalid_token"),
        (issuer.token(tenant="undeclared-ministry"), 403, "tenant_not_configured"),
    ]:
        resp = call(stack, token)
        assert resp.status_code == status and resp.json()["error"]["code"] == code, resp.text
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=issuer.token(), max_retries=0)
    assert client.chat.completions.create(**ASK).usage.completion_tokens == 3


def test_confidentiality_routing(stack):
    dev = stack.api_key  # dev-local: cleared for level 2
    level2 = {"x-confidentiality": "2"}
    refused = call(stack, dev, {**ASK, "model": "tiny-qwen2-ja"}, level2)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_approved_for_confidentiality"
    assert "tiny-qwen2-ja" in refused.json()["error"]["message"]
    routed = call(stack, dev, {**ASK, "model": "default"}, level2)
    assert routed.status_code == 200 and routed.headers["x-govllm-model"] == "tiny-llama-ja"
    assert call(stack, dev, {**ASK, "model": "qwen2"}, {"x-confidentiality": "1"}).status_code == 200
    city_key, _ = new_key(stack, "other-agency")
    assert call(stack, city_key, headers={"x-confidentiality": "3"}).status_code == 400
    sample, _ = new_key(stack, "sample-city")  # max level 1
    over = call(stack, sample, headers=level2)
    assert over.status_code == 403 and over.json()["error"]["code"] == "confidentiality_not_permitted"


def test_requests_per_minute_hold_across_router_replicas(stack):
    key, _ = new_key(stack, "test-city")  # 5 requests per minute
    wait_minute_start()
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: call(stack, key), range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 3
    refused = next(r for r in responses if r.status_code == 429)
    err = refused.json()["error"]
    assert err["code"] == "requests_per_minute_exceeded" and "requests_per_minute" in err["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_monthly_budget_counts_streamed_tokens_and_stops_at_the_cap(stack):
    key, _ = new_key(stack, "tiny-budget")  # 400 tokens a month
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)
    spent, answered, refused = 0, 0, None
    for _ in range(20):
        try:
            stream = client.chat.completions.create(
                model="tiny-llama-ja", max_tokens=20, stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "要約"}],
            )
            spent += [c for c in stream][-1].usage.total_tokens
            answered += 1
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None and refused.body["code"] == "monthly_token_budget_exceeded"
    assert refused.body["type"] == "insufficient_quota"
    assert int(refused.response.headers["retry-after"]) > 60  # next month, not next minute
    assert 0 < spent <= 400
    report = json.loads(stack.cli("usage", "--tenant", "tiny-budget", "--json").stdout)
    assert report["total_tokens"] == spent and report["requests"] == answered
    per_model = report["models"]["tiny-llama-ja"]
    assert per_model["prompt_tokens"] + per_model["completion_tokens"] == spent
    periodic = json.loads(stack.cli("usage", "--tenant", "tiny-budget", "--report", "--json").stdout)
    assert periodic["organisation"] == "予算僅少町" and periodic["training_use"] == "prohibited"


def test_store_outage_fails_closed_for_budgeted_tenants_only(stack):
    budgeted, _ = new_key(stack, "sample-city")
    assert call(stack, budgeted).status_code == 200
    with paused(stack.store_pid):
        down = call(stack, budgeted)
        unlimited = call(stack, stack.api_key)
        ready = httpx.get(stack.base_url + "/readyz", timeout=10).json()
    assert down.status_code == 503 and down.json()["error"]["code"] == "quota_store_unavailable"
    assert unlimited.status_code == 200
    assert ready["quota_store"] == "down"
    assert call(stack, budgeted).status_code == 200


def _wait_uploaded(stack, request_ids: set[str], tenant: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = stack.audit_export(tenant)
        if request_ids <= {r.get("client_request_id") for r in records}:
            return records
        time.sleep(2)
    raise AssertionError(f"records {request_ids} not in the archive after {timeout}s")


def test_audit_trail_is_encrypted_complete_and_verifiable(stack, outside):
    key, key_id = new_key(stack, "other-agency", "auditee")
    secret = f"住民票 機密 {time.time_ns()}"
    body = {**ASK, "messages": [{"role": "user", "content": secret}], "stream": True}
    with httpx.stream("POST", stack.base_url + CHAT, json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}", "x-request-id": "audit-check-1",
                               "x-confidentiality": "2"}) as resp:
        streamed = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in resp.iter_lines() if line.startswith("data: {") and '"choices":[{' in line)
    refused = call(stack, key, {**ASK, "max_tokens": -1}, {"x-request-id": "audit-check-2"})
    assert refused.status_code == 400
    records = {r.get("client_request_id"): r
               for r in _wait_uploaded(stack, {"audit-check-1", "audit-check-2"}, "other-agency")}
    rec = records["audit-check-1"]
    assert rec["prompt"][0]["content"] == secret and rec["output"][0]["text"] == streamed
    assert rec["user"] == "auditee" and rec["credential_id"] == key_id and rec["confidentiality"] == 2
    revision = next(m["revision"] for m in stack.spec["models"] if m["id"] == "tiny-llama-ja")
    assert rec["model_id"] == "tiny-llama-ja" and rec["model_revision"] == revision
    assert rec["usage"]["completion_tokens"] == 3 and rec["status"] == 200
    assert rec["training_use"] == "prohibited" and rec["client"]
    assert records["audit-check-2"]["status"] == 400
    assert records["audit-check-2"]["error_code"] == "invalid_value"
    s3 = outside["moto"].client("s3")
    for obj in s3.list_objects_v2(Bucket="govllm-audit")["Contents"]:
        data = s3.get_object(Bucket="govllm-audit", Key=obj["Key"])["Body"].read()
        assert secret.encode() not in data
        assert s3.head_object(Bucket="govllm-audit", Key=obj["Key"])["ServerSideEncryption"] == "aws:kms"
    verify = json.loads(stack.cli("audit", "verify", "--json", check=False).stdout)
    assert verify["intact"] and verify["problems"] == [], verify["problems"]
    assert verify["records"] >= 2 and len(verify["chains"]) >= 2  # two router replicas


def test_feedback_only_from_the_requesting_tenant_once_per_user(stack):
    key, _ = new_key(stack, "other-agency", "rater")
    answer = call(stack, key)
    assert answer.status_code == 200
    rated = answer.headers["x-govllm-request-id"]
    time.sleep(0.5)  # the request index is written when the request is settled
    ok = call(stack, key, {"request_id": rated, "rating": 1, "comment": "役に立った"},
              path="/v1/feedback")
    assert ok.status_code == 201, ok.text
    assert ok.json()["model"] == "tiny-llama-ja" and ok.json()["rating"] == 1
    stranger, _ = new_key(stack, "sample-city")
    foreign = call(stack, stranger, {"request_id": rated, "rating": -1}, path="/v1/feedback")
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "request_not_found"
    bad = call(stack, key, {"request_id": rated, "rating": 5}, path="/v1/feedback")
    assert bad.status_code == 400
    again = call(stack, key, {"request_id": rated, "rating": -1}, path="/v1/feedback")
    assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_already_given"
    colleague, _ = new_key(stack, "other-agency", "colleague")  # another user of the same tenant
    assert call(stack, colleague, {"request_id": rated, "rating": -1}, path="/v1/feedback").status_code == 201
    summary = {r["model"]: r for r in json.loads(stack.cli("feedback", "summary", "--json").stdout)}
    assert summary["tiny-llama-ja"]["up"] >= 1
