"""The router's span helpers (serving/observability/tracing/spans.py), with the SDK's in-memory exporter.

What the spans hold, how they hang together, how a caller's traceparent is continued and
passed on to the engine, what sampling does, and that ending a span never waits for the
exporter. The span tree of a real request through the real stack is
tests/integration/test_tracing.py.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes
from opentelemetry.trace import SpanKind, StatusCode

from serving.config import ModelRoute, TenantSettings
from serving.config.tracing import TracingSettings
from serving.observability.tracing import names
from serving.observability.tracing.logs import RateLimitedLog
from serving.observability.tracing.spans import (
    build_tracer,
    error_code,
    request_attributes,
    step_span_name,
)
from serving.request import APIError, RequestContext

PROMPT = "機密の会議メモ: 予算案は来週公表"
ANSWER = "回答本文のテキスト"
KEY = "gvk_abc123_" + "s" * 43
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
MODEL = ModelRoute(id="tiny-llama-ja", max_model_len=2048)
TENANT = TenantSettings(id="sample-city", name="サンプル市", kind="municipality",
                        usage_type="specialised-1")


def settings(ratio: float = 1.0, **extra) -> TracingSettings:
    return TracingSettings(enabled=True, endpoint="http://127.0.0.1:4318/v1/traces",
                           sample_ratio=ratio, **extra)


@pytest.fixture
def memory():
    exporter = InMemorySpanExporter()
    tracer = build_tracer(settings(), app="govllm-test", instance="r1", exporter=exporter)
    yield tracer, exporter
    tracer.shutdown()


def context(*headers: tuple[bytes, bytes]) -> RequestContext:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"authorization", b"Bearer " + KEY.encode()), *headers]}
    return RequestContext(request_id="a" * 32, operation="chat", scope=scope)


def served(ctx: RequestContext) -> RequestContext:
    """What a streamed chat request that was answered leaves on its context."""
    ctx.tenant, ctx.confidentiality = TENANT, 1
    ctx.payload = {"model": "default", "stream": True, "max_tokens": 16,
                   "messages": [{"role": "user", "content": PROMPT}]}
    ctx.raw_body = repr(ctx.payload).encode()
    ctx.requested_model, ctx.candidates, ctx.model, ctx.stream = "default", (MODEL,), MODEL, True
    ctx.usage = {"prompt_tokens": 21, "completion_tokens": 16, "total_tokens": 37}
    ctx.first_byte_at = ctx.started_at + 0.125
    ctx.status = 200
    ctx.response_chunks = [ANSWER.encode()]
    return ctx


class Noop:
    async def __call__(self, ctx):
        return None


class QuotaLedger:
    """Named like the real quota step, refusing as it does."""

    async def __call__(self, ctx):
        raise APIError(429, f"Tenant over budget ({PROMPT})", code="monthly_budget_exceeded")


class _Endpoint:
    url, replica_id = "http://127.0.0.1:41000", "replica-1"


def by_name(exporter: InMemorySpanExporter) -> dict:
    return {s.name: s for s in exporter.get_finished_spans()}


def traceparent(headers: dict) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of a W3C traceparent header."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


def run_request(tracer, ctx: RequestContext, steps=(), sent: list | None = None) -> None:
    """The router's order of events for one request, with the tracer's wrappers."""

    async def forward(ctx, send):
        async with asyncio.timeout(5):
            with tracer.admission(ctx):
                pass
            await tracer.hook(names.AUDIT_BEGIN_SPAN, Noop())(ctx)
            with tracer.attempt(ctx, MODEL, _Endpoint(), "/v1/chat/completions",
                                {"Authorization": "Bearer dataplane"}) as headers:
                if sent is not None:
                    sent.append(headers)
                ctx.attempts.append(f"{MODEL.id}@{_Endpoint.url}: streaming")  # as dispatch does
                await tracer.hook(names.AUDIT_COMMIT_SPAN, Noop())(ctx)

    async def main():
        tracer.begin(ctx)
        try:
            for step in tracer.steps(list(steps)):
                await step(ctx)
            await tracer.dispatch(forward)(ctx, None)
        except APIError as exc:
            ctx.status, ctx.error_code = exc.status, exc.code
        finally:
            tracer.end(ctx)

    asyncio.run(main())


# --- names ------------------------------------------------------------------------------------

def test_attribute_names_are_the_installed_semantic_conventions():
    known = {v for k, v in vars(gen_ai_attributes).items() if k.startswith("GEN_AI_")}
    ours = {v for k, v in vars(names).items() if k.startswith("GEN_AI_")}
    assert ours and ours <= known, ours - known
    # TTFT under the current name (gen_ai.response.time_to_first_chunk, seconds)
    assert names.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK == gen_ai_attributes.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK
    assert set(names.OPERATION_NAMES) == {"chat", "completions", "embeddings", "responses", "score", "rerank"}
    assert {"chat", "text_completion", "embeddings"} <= {
        v.value for v in gen_ai_attributes.GenAiOperationNameValues}


def test_step_span_names_and_error_codes():
    from serving.router.pipeline import ParseRequest

    assert step_span_name(ParseRequest()) == "govllm.parse"
    assert step_span_name(QuotaLedger()) == "govllm.quota"
    assert step_span_name(Noop()) == "govllm.noop"

    class TenantGate:
        pass

    assert step_span_name(TenantGate()) == "govllm.tenant_gate"
    assert error_code(APIError(429, PROMPT, code="rate_limited")) == "rate_limited"
    assert error_code(TimeoutError(PROMPT)) == "TimeoutError"

    class Failed(Exception):  # dispatch's _Failed wraps the APIError it stands for
        def __init__(self):
            self.error = APIError(503, PROMPT, code="model_unavailable")

    assert error_code(Failed()) == "model_unavailable"


# --- one request ------------------------------------------------------------------------------

def test_one_request_is_one_tree_with_genai_attributes(memory):
    tracer, exporter = memory
    ctx = served(context())
    sent: list = []
    run_request(tracer, ctx, steps=[Noop()], sent=sent)
    assert tracer.flush()
    spans = by_name(exporter)
    root = spans["chat default"]
    assert root.kind == SpanKind.SERVER and root.parent is None
    trace_id = root.context.trace_id
    assert all(s.context.trace_id == trace_id for s in spans.values())
    dispatch = spans[names.DISPATCH_SPAN]
    attempt = spans["POST /v1/chat/completions"]
    assert spans["govllm.noop"].parent.span_id == root.context.span_id
    assert dispatch.parent.span_id == root.context.span_id
    for child in (names.ADMISSION_SPAN, names.AUDIT_BEGIN_SPAN, names.AUDIT_COMMIT_SPAN):
        assert spans[child].parent.span_id == dispatch.context.span_id, child
    assert attempt.kind == SpanKind.CLIENT and attempt.parent.span_id == dispatch.context.span_id
    # the engine's span becomes the attempt's child: its traceparent names the attempt span
    assert traceparent(sent[0]) == (f"{trace_id:032x}", f"{attempt.context.span_id:016x}", True)
    assert sent[0]["Authorization"] == "Bearer dataplane"
    assert dict(ctx.response_headers)[b"x-govllm-trace-id"] == f"{trace_id:032x}".encode()
    a = root.attributes
    assert a[names.GEN_AI_OPERATION_NAME] == "chat"
    assert a[names.GEN_AI_REQUEST_MODEL] == "default" and a[names.GEN_AI_RESPONSE_MODEL] == MODEL.id
    assert (a[names.GEN_AI_USAGE_INPUT_TOKENS], a[names.GEN_AI_USAGE_OUTPUT_TOKENS]) == (21, 16)
    assert a[names.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] == pytest.approx(0.125)
    assert a[names.GEN_AI_REQUEST_MAX_TOKENS] == 16 and a[names.GEN_AI_REQUEST_STREAM] is True
    assert (a[names.TENANT], a[names.USAGE_TYPE], a[names.CONFIDENTIALITY]) == (
        "sample-city", "specialised-1", 1)
    assert a[names.REQUEST_ID] == ctx.request_id and a["http.response.status_code"] == 200
    assert attempt.attributes["govllm.attempt.outcome"] == "streaming"
    assert attempt.attributes["server.port"] == 41000
    assert root.resource.attributes["service.name"] == "govllm-router"
    for span in spans.values():
        texts = [span.name, *map(str, span.attributes.values()), *map(str, span.attributes)]
        assert not any(PROMPT in t or ANSWER in t or KEY in t or "dataplane" in t for t in texts)


def test_a_refusing_step_marks_its_span_with_the_code_not_the_message(memory):
    tracer, exporter = memory
    ctx = context()
    ctx.tenant = TENANT
    run_request(tracer, ctx, steps=[Noop(), QuotaLedger()])
    assert tracer.flush()
    spans = by_name(exporter)
    quota = spans["govllm.quota"]
    assert quota.status.status_code == StatusCode.ERROR
    assert quota.status.description == "monthly_budget_exceeded"
    assert quota.attributes[names.ERROR_TYPE] == "monthly_budget_exceeded"
    assert names.DISPATCH_SPAN not in spans  # never dispatched
    root = spans["POST /v1/chat/completions"]  # no model resolved: the HTTP name stays
    assert root.attributes[names.ERROR_TYPE] == "monthly_budget_exceeded"
    assert root.status.status_code == StatusCode.UNSET  # a 4xx is the client's, not an error
    assert all(PROMPT not in str(v) for s in spans.values() for v in s.attributes.values())


def test_a_callers_traceparent_is_continued(memory):
    tracer, exporter = memory
    ctx = served(context((b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode())))
    sent: list = []
    run_request(tracer, ctx, sent=sent)
    assert tracer.flush()
    root = by_name(exporter)["chat default"]
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE
    assert f"{root.parent.span_id:016x}" == CLIENT_SPAN and root.parent.is_remote
    assert traceparent(sent[0])[0] == CLIENT_TRACE
    assert dict(ctx.response_headers)[b"x-govllm-trace-id"] == CLIENT_TRACE.encode()


def test_a_malformed_traceparent_starts_a_new_trace(memory):
    tracer, exporter = memory
    ctx = served(context((b"traceparent", b"00-not-a-trace-id-01")))
    run_request(tracer, ctx)
    assert tracer.flush()
    root = by_name(exporter)["chat default"]
    assert root.parent is None and f"{root.context.trace_id:032x}" != CLIENT_TRACE


@pytest.mark.parametrize(("ratio", "client_flags", "recorded"), [
    (0.0, None, False),   # the ratio decides for new traces
    (1.0, None, True),
    (0.0, "01", True),    # parent-based: the caller's decision wins
    (1.0, "00", False),
])
def test_sampling_is_parent_based_and_the_engine_is_told(ratio, client_flags, recorded):
    exporter = InMemorySpanExporter()
    tracer = build_tracer(settings(ratio), app="govllm-test", instance="r1", exporter=exporter)
    headers = [] if client_flags is None else [
        (b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-{client_flags}".encode())]
    ctx = served(context(*headers))
    sent: list = []
    ran: list = []

    class Counted:
        async def __call__(self, ctx):
            ran.append(ctx.request_id)

    run_request(tracer, ctx, steps=[Counted()], sent=sent)
    assert tracer.flush()
    assert ran == [ctx.request_id]  # the steps run either way
    assert bool(exporter.get_finished_spans()) is recorded
    trace_id, _, sampled = traceparent(sent[0])
    assert sampled is recorded  # vLLM's parent-based sampler follows the flag
    assert dict(ctx.response_headers)[b"x-govllm-trace-id"] == trace_id.encode()
    tracer.shutdown()


def test_root_attributes_record_only_names_the_spec_declares():
    ctx = served(context())
    ctx.requested_model, ctx.candidates, ctx.model = PROMPT, (), None  # matched nothing (404)
    ctx.usage, ctx.status, ctx.error_code = None, 404, "model_not_found"
    out = request_attributes(ctx)
    assert names.GEN_AI_REQUEST_MODEL not in out and names.GEN_AI_RESPONSE_MODEL not in out
    assert out[names.ERROR_TYPE] == "model_not_found"
    assert not any(PROMPT in str(v) for v in out.values())
    ctx = served(context())
    ctx.payload["n"], ctx.usage_estimated = 3, True
    ctx.model = MODEL.model_copy(update={"endpoint": None})
    out = request_attributes(ctx)
    assert out[names.GEN_AI_REQUEST_CHOICE_COUNT] == 3 and out[names.USAGE_ESTIMATED] is True
    assert out[names.GEN_AI_PROVIDER_NAME] == names.PROVIDER


# --- export never holds a request up ----------------------------------------------------------

class BlockedExporter(SpanExporter):
    """An exporter stuck in its first export until released (a collector that never answers)."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans):
        self.entered.set()
        self.release.wait(60)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.release.set()


def test_requests_finish_while_the_exporter_is_stuck_and_the_queue_overflows():
    exporter = BlockedExporter()
    tracer = build_tracer(settings(export_interval_s=0.05, max_queue_spans=64, max_batch_spans=8),
                          app="govllm-test", instance="r1", exporter=exporter)
    run_request(tracer, served(context()))
    assert exporter.entered.wait(10)  # the exporter thread is now stuck inside export()
    for _ in range(200):  # ~10 spans each: far more than the queue holds
        run_request(tracer, served(context()), steps=[Noop()])
    assert not exporter.release.is_set() and exporter.exported == 0  # still stuck: nobody waited
    exporter.release.set()
    assert tracer.flush(10)
    assert 0 < exporter.exported <= 64 + 8 + 10  # the overflow was dropped, not queued for ever
    tracer.shutdown()


def test_rate_limited_log_lets_one_record_through_per_interval():
    import logging

    limit = RateLimitedLog(every_s=3600)
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "Queue full, dropping", None, None)
    assert limit.filter(record) is True
    assert not any(limit.filter(record) for _ in range(100))


def test_the_quieted_loggers_are_the_ones_that_log_export_failures():
    import logging

    from opentelemetry.exporter.otlp.proto.http import trace_exporter
    from opentelemetry.sdk import _shared_internal

    from serving.observability.tracing.logs import NOISY_LOGGERS, quiet_export_logs

    # the processor's "Queue full, dropping Span." and the exporter's "Failed to export" loggers
    assert set(NOISY_LOGGERS) == {_shared_internal._logger.name, trace_exporter._logger.name}
    quiet_export_logs()
    quiet_export_logs()
    for name in NOISY_LOGGERS:
        assert sum(isinstance(f, RateLimitedLog) for f in logging.getLogger(name).filters) == 1


# --- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "message"), [
    ({"enabled": True}, "tracing.endpoint is required"),
    ({"enabled": True, "endpoint": "grpc://collector:4317"}, "http:// or https://"),
    ({"enabled": True, "endpoint": "http://user:pw@collector:4318/v1/traces"}, "credential"),
    ({"enabled": True, "endpoint": "http://collector:4318"}, "/v1/traces"),
    ({"enabled": True, "endpoint": "http://c:4318/v1/traces", "sample_ratio": 1.5}, "sample_ratio"),
    ({"enabled": True, "endpoint": "http://c:4318/v1/traces", "max_queue_spans": 64,
      "max_batch_spans": 128}, "max_batch_spans"),
])
def test_settings_refuse_what_cannot_work(fields, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        TracingSettings(**fields)
    assert TracingSettings().enabled is False  # off by default, and then nothing is required
