"""Only the router reaches an engine: a replica's data-plane port refuses everyone else."""

from __future__ import annotations

import httpx
import pytest

from tests.faults.conftest import WORKHORSE

pytestmark = pytest.mark.faults

GENERATED = "vllm:generation_tokens_total"
PROMPTS = "vllm:prompt_tokens_total"

CALLS = [
    ("POST", "/v1/chat/completions", {"model": WORKHORSE, "max_tokens": 5,
                                      "messages": [{"role": "user", "content": "直接"}]}),
    ("POST", "/v1/completions", {"model": WORKHORSE, "prompt": "直接", "max_tokens": 5}),
    ("POST", "/tokenize", {"model": WORKHORSE, "prompt": "直接"}),
    ("POST", "/detokenize", {"model": WORKHORSE, "tokens": [1, 2]}),
    ("GET", "/v1/models", None),
    ("GET", "/version", None),
    ("GET", "/docs", None),
]


def test_replica_ports_refuse_every_request_without_the_router_credential(fault_stack):
    before = {m: (fault_stack.engine_metric(m, GENERATED), fault_stack.engine_metric(m, PROMPTS))
              for m in ("tiny-llama-ja", "tiny-qwen2-ja")}
    urls = [e["url"] for m in before for e in fault_stack.endpoints(m, fresh=True)]
    assert urls
    for url in urls:
        for method, path, body in CALLS:
            # nothing, a govllm API key (valid at the router, worthless here), a made-up token
            for auth in (None, f"Bearer {fault_stack.api_key}", "Bearer guess"):
                headers = {"Authorization": auth} if auth else {}
                resp = httpx.request(method, url + path, json=body, headers=headers, timeout=10)
                assert resp.status_code == 401, (url, path, auth is not None, resp.text)
                assert resp.json()["error"]["code"] == "data_plane_credential_required"
        # probes stay open: Prometheus and Kubernetes read them without a credential
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert httpx.get(url + "/metrics", timeout=10).status_code == 200
    after = {m: (fault_stack.engine_metric(m, GENERATED), fault_stack.engine_metric(m, PROMPTS))
             for m in before}
    assert after == before, "a refused request reached an engine"


def test_the_same_request_through_the_router_does_reach_the_engine(fault_stack, openai_client):
    """Control: the counters above do move when a request is allowed, so the test can fail."""
    before = fault_stack.engine_metric(WORKHORSE, GENERATED)
    openai_client.chat.completions.create(model=WORKHORSE, max_tokens=5,
                                          messages=[{"role": "user", "content": "経由"}])
    assert fault_stack.engine_metric(WORKHORSE, GENERATED) > before
