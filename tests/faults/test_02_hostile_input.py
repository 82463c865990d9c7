"""Hostile bodies and headers, generated: a clear 4xx with an OpenAI error body, an audit record for
each, and nothing crashes or wedges a router replica."""

from __future__ import annotations

import itertools
import json
import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.conftest import WORKHORSE
from tests.faults.invariants import records_for

pytestmark = pytest.mark.faults

CHAT = "/v1/chat/completions"
ALLOWED = {200, 400, 404, 408, 413, 415}
seen: dict[str, int] = {}  # client request id -> status, checked against the trail at the end
_ids = itertools.count()  # one id per request sent, also those of a failing example and its shrinking


def _dupes(key: str) -> st.SearchStrategy[bytes]:
    return st.just(f'{{"model": "{WORKHORSE}", "{key}": 1, "{key}": 2, "messages": []}}'.encode())


def _mutant_chat() -> st.SearchStrategy[bytes]:
    """A chat request with one hostile part: numbers, strings, nesting or types gone wrong."""
    hostile_value = st.one_of(
        st.just("\ud800"), st.just("\udfff text"), st.text(max_size=50),
        st.integers(min_value=-(10**40), max_value=10**40), st.floats(allow_nan=False),
        st.lists(st.integers(), max_size=5), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
        st.none(), st.booleans(),
    )
    field = st.sampled_from(["model", "max_tokens", "n", "temperature", "top_p", "stream",
                             "messages", "stream_options", "max_completion_tokens", "logprobs"])

    def build(name, value, ensure_ascii):
        body = {"model": WORKHORSE, "max_tokens": 2, "messages": [{"role": "user", "content": "試験"}]}
        body[name] = value
        try:
            return json.dumps(body, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
        except ValueError:
            return json.dumps(body).encode()

    return st.builds(build, field, hostile_value, st.booleans())


BODIES = st.one_of(
    _mutant_chat(),
    st.binary(max_size=300),
    st.sampled_from([
        b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe\xfa", b'{"model": NaN}', b'{"a": Infinity}',
        b'{"model": "' + WORKHORSE.encode() + b'", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b"[" * 3000 + b"]" * 3000, b'{"a":' * 200 + b"1" + b"}" * 200,
        b'{"max_tokens": 1' + b"0" * 5000 + b"}", b'{"model": "\x00\x01"}',
    ]),
    _dupes("model"), _dupes("max_tokens"),
)
CONTENT_TYPES = st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                 "application/xml", "APPLICATION/JSON"])
EXTRA_HEADERS = st.lists(st.sampled_from([
    ("x-confidentiality", "1"), ("x-confidentiality", "9"), ("x-confidentiality", "1"),
    ("x-govllm-usage-type", "general-1"), ("x-govllm-usage-type", "bogus"),
    ("content-type", "application/json"), ("x-something", "a" * 2000),
]), max_size=3)


def _post(stack, body: bytes, content_type, extra) -> tuple[str, httpx.Response]:
    cid = f"hostile-{next(_ids)}"
    headers = [("authorization", f"Bearer {stack.api_key}"), ("x-request-id", cid)]
    if content_type is not None:
        headers.append(("content-type", content_type))
    headers += extra
    return cid, httpx.post(stack.base_url + CHAT, content=body, headers=headers, timeout=60)


def assert_openai_error(resp: httpx.Response) -> None:
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and error["type"] and error["code"]


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=False)
@given(body=BODIES, content_type=CONTENT_TYPES, extra=EXTRA_HEADERS)
def test_hostile_requests_get_a_clear_error_and_a_record(fault_stack, body, content_type, extra):
    cid, resp = _post(fault_stack, body, content_type, extra)
    assert resp.status_code in ALLOWED, (resp.status_code, resp.text[:300])
    if resp.status_code != 200:
        assert_openai_error(resp)
    assert resp.headers.get("x-govllm-request-id"), "every router answer names its request id"
    seen[cid] = resp.status_code


def test_every_hostile_request_is_on_the_trail_once_and_the_routers_survived(fault_stack, openai_client):
    assert len(seen) >= 100
    routers_before = fault_stack.initial_router_pids
    records = records_for(fault_stack, "dev-local", set(seen))
    for cid, status in seen.items():
        assert len(records[cid]) == 1, (cid, records[cid])
        assert records[cid][0]["status"] == status, (cid, records[cid][0]["status"], status)
    assert fault_stack.replica_pids("router") == routers_before, "a router replica was restarted"
    answer = openai_client.chat.completions.create(model=WORKHORSE, max_tokens=2,
                                                   messages=[{"role": "user", "content": "正常"}])
    assert answer.usage.completion_tokens == 2


def test_oversized_headers_are_refused_by_haproxy_before_any_router(fault_stack):
    """HAProxy (2.8, bundled with Ray) answers these itself, with its own HTML page: its errorfile
    is not applied to parse errors (haproxy/haproxy#3032). No router or engine sees the request."""
    sock = socket.create_connection(("127.0.0.1", fault_stack.port), timeout=30)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 40000 + b"\r\n\r\n")
        answer = sock.recv(4096)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 400")
    assert httpx.get(fault_stack.base_url + "/healthz", timeout=10).status_code == 200
