"""One trace per request across the router and vLLM, received from the running stack.

The session's stack exports every request's spans to the OTLP test receiver
(tests/otlp_test_receiver.py; conftest.py points the spec's `tracing.endpoint` at it): the
routers' spans with govllm's exporter, the engines' own `llm_request` span with vLLM's. A
streamed chat request made with the official `openai` client must come back as one tree with
one trace id: the caller's traceparent continued, the router's steps, the attempt on the
replica and vLLM's span under it, GenAI attributes carrying the real token counts, and no
prompt text, answer text or credential in any span the stack ever exported.
"""

from __future__ import annotations

import secrets
import time

import pytest

from tests.otlp_test_receiver import OTLPTestReceiver, ReceivedSpan

pytestmark = pytest.mark.integration

MODEL = "tiny-llama-ja"
#: A prompt no other test sends, so finding it anywhere in a span is a leak, not a collision.
PROMPT = "トレース検査: 住民票の写しの交付申請について要点を三つ挙げてください " + secrets.token_hex(6)
ROUTER_STEPS = {"govllm.authenticate", "govllm.parse", "govllm.resolve_model", "govllm.policy",
                "govllm.quota", "govllm.dispatch"}
UNDER_DISPATCH = {"govllm.admission", "govllm.audit.begin", "POST /v1/chat/completions",
                  "govllm.audit.commit"}


def stream_chat(client, *, traceparent: str | None = None, max_tokens: int = 24,
                prompt: str = PROMPT) -> tuple[dict, str, dict]:
    """(response headers, answer text, usage) of a streamed chat request."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, stream=True, max_tokens=max_tokens, temperature=0,
        messages=[{"role": "user", "content": prompt}],
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},  # exactly max_tokens, so the counts are known
        extra_headers={"traceparent": traceparent} if traceparent else None,
    )
    text, usage = [], None
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    return dict(raw.headers), "".join(text), usage


def complete_trace(receiver: OTLPTestReceiver, trace_id: str) -> dict[str, ReceivedSpan]:
    """The trace's spans by name, once the router's root and vLLM's span have both arrived."""
    def done(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {f"chat {MODEL}", "llm_request", *ROUTER_STEPS, *UNDER_DISPATCH} <= names

    spans = [s for s in receiver.wait_for(done, 60) if s.trace_id == trace_id]
    by_name = {s.name: s for s in spans}
    assert len(by_name) == len(spans), sorted(s.name for s in spans)  # one of each: no retry here
    return by_name


def test_a_streamed_chat_request_is_one_trace_from_caller_to_engine(client, stack, traces):
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    headers, answer, usage = stream_chat(client, traceparent=f"00-{caller_trace}-{caller_span}-01")
    assert len(answer) >= 8 and usage["completion_tokens"] == 24
    assert headers["x-govllm-trace-id"] == caller_trace  # the response names the trace
    spans = complete_trace(traces, caller_trace)

    root = spans[f"chat {MODEL}"]
    assert root.kind == "SERVER" and root.parent_span_id == caller_span  # the caller's continued
    assert root.service == "govllm-router"
    for name in ROUTER_STEPS:
        assert spans[name].parent_span_id == root.span_id, name
    dispatch = spans["govllm.dispatch"]
    for name in UNDER_DISPATCH:
        assert spans[name].parent_span_id == dispatch.span_id, name
    attempt = spans["POST /v1/chat/completions"]
    engine = spans["llm_request"]
    assert attempt.kind == "CLIENT" and attempt.attributes["govllm.attempt.outcome"] == "streaming"
    assert engine.parent_span_id == attempt.span_id  # vLLM's span joined through traceparent
    assert engine.service == "govllm-engine" and engine.resource["govllm.model"] == MODEL
    # vLLM's request id is its completion id, chatcmpl-<the router's request id>
    assert engine.attributes["gen_ai.request.id"] == "chatcmpl-" + headers["x-govllm-request-id"]
    # each step lies inside its parent
    assert root.start_ns <= dispatch.start_ns <= attempt.start_ns and attempt.end_ns <= root.end_ns

    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.stream"] is True
    assert a["gen_ai.request.model"] == MODEL and a["gen_ai.response.model"] == MODEL
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 24
    assert 0 < a["gen_ai.response.time_to_first_chunk"] < (root.end_ns - root.start_ns) / 1e9
    assert (a["govllm.tenant"], a["govllm.usage_type"], a["govllm.confidentiality"]) == (
        "dev-local", "general-1", 1)
    assert a["govllm.request_id"] == headers["x-govllm-request-id"]
    # the engine counted the same tokens (vLLM's own attribute names)
    assert engine.attributes["gen_ai.usage.prompt_tokens"] == usage["prompt_tokens"]
    assert engine.attributes["gen_ai.usage.completion_tokens"] == 24

    # nothing confidential in any span the stack has exported so far, from any test
    secrets_seen = [PROMPT, PROMPT.split()[1], answer, stack.api_key, stack.data_plane_token]
    leaks = [(s.service, s.name, text[:80]) for s in traces.snapshot() for text in s.strings()
             if any(secret in text for secret in secrets_seen)]
    assert leaks == []


def test_a_caller_that_does_not_sample_is_not_recorded_anywhere(client, traces):
    unsampled = secrets.token_hex(16)
    headers, _, _ = stream_chat(client, traceparent=f"00-{unsampled}-{secrets.token_hex(8)}-00",
                                max_tokens=4, prompt="サンプリングしない要求")
    assert headers["x-govllm-trace-id"] == unsampled
    # a later sampled request's router and engine spans arrive after any the first one had
    # queued in the same processes; wait for it, then a few more export rounds
    later, _, _ = stream_chat(client, max_tokens=4, prompt="後続の要求")
    complete_trace(traces, later["x-govllm-trace-id"])
    time.sleep(3 * 0.5)  # the stack exports every 0.5 s (conftest.py)
    assert traces.trace(unsampled) == []


def test_a_hung_or_absent_collector_breaks_no_request(client, traces):
    """Exports run on the exporters' own threads: while the collector holds them unanswered
    (until their timeout) or refuses connections, requests are served in full."""
    with traces.hold():
        stream_chat(client, max_tokens=8, prompt="収集器が応答しない間の要求")
        traces.wait_for(lambda _: traces.held > 0, 30)  # an export is stuck in the collector
        served = [stream_chat(client, max_tokens=8, prompt=f"保留中の要求 {i}") for i in range(3)]
        assert traces.held > 0  # still stuck: the requests did not wait for it
    assert all(usage["completion_tokens"] == 8 for _, _, usage in served)
    traces.stop()
    try:
        down = [stream_chat(client, max_tokens=8, prompt=f"収集器停止中の要求 {i}") for i in range(3)]
        assert all(usage["completion_tokens"] == 8 for _, _, usage in down)
    finally:
        traces.start()
    headers, _, _ = stream_chat(client, max_tokens=4, prompt="収集器復旧後の要求")
    complete_trace(traces, headers["x-govllm-trace-id"])  # exporting again, router and engine
