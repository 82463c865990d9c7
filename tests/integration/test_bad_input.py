"""Malformed and hostile input: the right status, an OpenAI error body, and nothing breaks."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
GOOD = {"model": "tiny-llama-ja", "messages": [{"role": "user", "content": "こんにちは"}], "max_tokens": 2}


def post(stack, path, *, content=None, json_body=None, key="default", headers=None):
    h = {"Content-Type": "application/json"}
    if key == "default":
        h["Authorization"] = f"Bearer {stack.api_key}"
    elif key is not None:
        h["Authorization"] = key
    h.update(headers or {})
    return httpx.post(stack.base_url + path, content=content, json=json_body, headers=h, timeout=60)


def assert_openai_error(resp, status, code=None, param=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize(
    "content, code",
    [
        (b"{not json", "invalid_json"),
        (b'{"model": "tiny-llama-ja", "messages": [', "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b"[1, 2, 3]", "invalid_request_body"),
        (b'"just a string"', "invalid_request_body"),
        (b"", "invalid_request_body"),
    ],
)
def test_malformed_json_is_400(stack, content, code):
    assert_openai_error(post(stack, CHAT, content=content), 400, code)


@pytest.mark.parametrize(
    "change, param",
    [
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": ""}, "model"),
        ({"n": 1000}, "n"),
        ({"temperature": -1}, "temperature"),
    ],
)
def test_schema_violations_are_400_naming_the_param(stack, change, param):
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    assert_openai_error(post(stack, CHAT, json_body=body), 400, param=param)


def test_schema_violations_raise_typed_errors_in_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny-llama-ja", messages=[{"role": "wizard", "content": "x"}])
    assert exc.value.body["param"] == "messages.0.role"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-llama-ja", prompt="x", max_tokens=-1)


def test_unknown_model_is_404(stack, client):
    err = assert_openai_error(post(stack, CHAT, json_body={**GOOD, "model": "gpt-4o"}), 404, "model_not_found", "model")
    assert "tiny-llama-ja" in err["message"] and "default" in err["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=GOOD["messages"])


@pytest.mark.parametrize("path, field", [(CHAT, "messages"), ("/v1/completions", "prompt")])
def test_prompt_longer_than_context_is_400_with_length_and_limit(stack, path, field):
    long_text = "会議の議事録を要約してください。" * 1500
    body = (
        {"model": "tiny-qwen2-ja", "messages": [{"role": "user", "content": long_text}], "max_tokens": 8}
        if field == "messages"
        else {"model": "tiny-qwen2-ja", "prompt": long_text, "max_tokens": 8}
    )
    err = assert_openai_error(post(stack, path, json_body=body), 400, "context_length_exceeded", field)
    # the exact prompt length (not vLLM's truncated "at least 2049") and the limit
    numbers = [int(w) for w in err["message"].replace(",", " ").split() if w.isdigit()]
    assert 2048 in numbers
    prompt_tokens = max(numbers)
    assert prompt_tokens > 5000, err["message"]


def test_prompt_plus_max_tokens_over_context_is_400(stack):
    body = {**GOOD, "max_tokens": 4000}
    err = assert_openai_error(post(stack, CHAT, json_body=body), 400)
    assert "2048" in err["message"]


def test_oversized_body_is_413_declared_and_chunked(stack):
    big = json.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]}).encode()
    assert_openai_error(post(stack, CHAT, content=big), 413, "request_too_large")

    def chunks():
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    resp = httpx.post(stack.base_url + CHAT, content=chunks(), timeout=60,
                      headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"})
    assert_openai_error(resp, 413, "request_too_large")


@pytest.mark.parametrize(
    "key, code",
    [(None, "missing_api_key"), ("Bearer gvk_000000000000_wrong", "invalid_api_key"),
     ("Bearer not-a-key", "invalid_api_key"), ("Basic dXNlcjpwYXNz", "invalid_api_key"), ("Bearer", "invalid_api_key")],
)
def test_auth_failures_are_401(stack, key, code):
    resp = post(stack, CHAT, json_body=GOOD, key=key)
    assert_openai_error(resp, 401, code)
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert_openai_error(httpx.get(stack.base_url + "/v1/models", headers={"Authorization": key or ""}), 401)


def test_sdk_with_wrong_key_raises_authentication_error(stack):
    bad = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="gvk_000000000000_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_wrong_method_and_unknown_route(stack):
    assert_openai_error(httpx.get(stack.base_url + CHAT, timeout=10), 405, "method_not_allowed")
    assert_openai_error(httpx.get(stack.base_url + "/v1/embeddings-nope", timeout=10), 404, "unknown_route")


def test_hostile_traffic_does_not_break_the_router(stack, client):
    """Garbage bytes, half-sent requests and floods of bad bodies; then normal service."""
    for raw in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 999999\r\n\r\n{\"model\""):
        with socket.create_connection(("127.0.0.1", int(stack.base_url.rsplit(":", 1)[1])), timeout=5) as s:
            s.sendall(raw)
            time.sleep(0.05)
    bodies = [b"{", b"[]", b"null", json.dumps({**GOOD, "max_tokens": -1}).encode(), b"\x00" * 1000]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda b: post(stack, CHAT, content=b).status_code, bodies * 8))
    assert set(statuses) == {400}
    resp = client.chat.completions.create(model="default", messages=GOOD["messages"], max_tokens=3)
    assert resp.usage.completion_tokens == 3
