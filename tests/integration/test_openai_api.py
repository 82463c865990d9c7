"""The router through the official `openai` client: models, chat, streaming, completions, aliases."""

from __future__ import annotations

import json
import urllib.request

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

LLAMA, QWEN = "tiny-llama-ja", "tiny-qwen2-ja"
PROMPT = [{"role": "user", "content": "本日の会議の議事録を要約してください。"}]


def test_models_lists_both_families_with_aliases(client):
    models = {m.id: m for m in client.models.list().data if m.model_extra["kind"] == "chat"}
    assert set(models) == {LLAMA, QWEN}
    assert models[LLAMA].model_extra["family"] == "llama"
    assert models[QWEN].model_extra["family"] == "qwen2"
    assert "default" in models[LLAMA].model_extra["aliases"]
    assert client.models.retrieve(QWEN).id == QWEN
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize("model", [LLAMA, QWEN])
def test_chat_non_streaming_has_usage(client, model):
    resp = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=8, temperature=0)
    assert resp.model == model
    assert resp.choices[0].message.role == "assistant"
    assert resp.usage.completion_tokens == 8
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 8


@pytest.mark.parametrize("model", [LLAMA, QWEN])
def test_chat_streaming_matches_non_streaming(client, model):
    full = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert all(c.model == model for c in chunks)


def test_stream_without_usage_request_carries_no_usage(stack):
    body = {"model": LLAMA, "messages": PROMPT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all('"usage"' not in e for e in events[:-1])
    assert any(json.loads(e)["choices"] for e in events[:-1])


@pytest.mark.parametrize("model", [LLAMA, QWEN])
def test_completions_streaming_and_not(client, model):
    resp = client.completions.create(model=model, prompt="住民票の写しの交付申請は", max_tokens=6, temperature=0)
    assert resp.usage.completion_tokens == 6 and resp.choices[0].text
    stream = client.completions.create(
        model=model, prompt="住民票の写しの交付申請は", max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == resp.choices[0].text
    assert chunks[-1].usage.completion_tokens == 6


@pytest.mark.parametrize("alias, target", [("default", LLAMA), ("llama", LLAMA), ("qwen2", QWEN)])
def test_aliases_resolve_in_the_router(client, alias, target):
    raw = client.chat.completions.with_raw_response.create(model=alias, messages=PROMPT, max_tokens=2)
    assert raw.headers["x-govllm-model"] == target
    assert raw.parse().model == target


def test_two_models_are_distinct_engines(client):
    """Same prompt, greedy: different random weights must answer differently."""
    a = client.chat.completions.create(model=LLAMA, messages=PROMPT, max_tokens=16, temperature=0)
    b = client.chat.completions.create(model=QWEN, messages=PROMPT, max_tokens=16, temperature=0)
    assert a.choices[0].message.content != b.choices[0].message.content


@pytest.mark.parametrize("model", [LLAMA, QWEN])
def test_greedy_through_router_equals_engine_called_directly(stack, client, model):
    """The router must not change what the engine generates."""
    [endpoint] = stack.status()["endpoints"][model]
    # the replica's data plane takes only the routers' credential (the test stack exported it)
    direct = openai.OpenAI(base_url=endpoint["url"] + "/v1", api_key=stack.data_plane_token, max_retries=0)
    kwargs = dict(messages=PROMPT, max_tokens=24, temperature=0, logprobs=True)
    via_router = client.chat.completions.create(model=model, **kwargs)
    via_engine = direct.chat.completions.create(model=model, **kwargs)
    tokens = lambda r: [t.token for t in r.choices[0].logprobs.content]  # noqa: E731
    assert tokens(via_router) == tokens(via_engine) and len(tokens(via_router)) == 24
    assert via_router.usage == via_engine.usage


def test_request_ids_are_assigned_by_the_server_and_reach_the_engine(stack, client):
    """The client's x-request-id is echoed for correlation; the id that keys the trail, the
    ledger and feedback is the router's own, so two clients can never collide on one."""
    ids = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model=LLAMA, messages=PROMPT, max_tokens=2, extra_headers={"x-request-id": "same-client-id"}
        )
        assert raw.headers["x-request-id"] == "same-client-id"
        ids.append(raw.headers["x-govllm-request-id"])
        assert raw.parse().id == f"chatcmpl-{ids[-1]}"
    assert ids[0] != ids[1] and all(len(i) == 32 for i in ids)


def test_health_and_readiness_need_no_key(stack):
    with urllib.request.urlopen(stack.base_url + "/healthz", timeout=10) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    with urllib.request.urlopen(stack.base_url + "/readyz", timeout=10) as resp:
        ready = json.loads(resp.read())
    assert ready["status"] == "ready"
    assert ready["models"] == {m["id"]: {"ready_replicas": 1} for m in stack.spec["models"]}
