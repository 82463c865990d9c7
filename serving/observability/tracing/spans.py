"""The router's spans: one trace per API request, exported with OTLP/HTTP in the background.

Tree of one request (docs/observability.md, "Traces"):

    chat <model>                 SERVER  the request as the router saw it; GenAI attributes
    ├─ govllm.authenticate ...   INTERNAL one per request-path step (policy, PII guard, quota)
    └─ govllm.dispatch           INTERNAL admission, the audit records, the attempts
       ├─ govllm.admission
       ├─ govllm.audit.begin
       ├─ POST /v1/...           CLIENT   one per attempt on a replica; its traceparent goes
       │  └─ llm_request         SERVER   upstream, so vLLM's own span is its child
       └─ govllm.audit.commit

Only ids, counts, durations, names declared in the spec and error codes are recorded: never
prompt or answer text, credentials, user ids or error messages (which can quote input).
Spans are parented explicitly through the RequestContext rather than through the ambient
OpenTelemetry context, so nothing here depends on which coroutine or thread runs a step.
Ending a span only appends it to the batch processor's queue; the export runs on the
processor's thread and drops spans (never waits) when its queue is full.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, format_trace_id
from opentelemetry.trace.propagation import set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serving.config.tracing import TracingSettings
from serving.observability.tracing.engine import ROUTER_SERVICE
from serving.observability.tracing.logs import quiet_export_logs
from serving.observability.tracing.names import (
    ADMISSION_SPAN,
    ATTEMPTS,
    CONFIDENTIALITY,
    DISPATCH_SPAN,
    ERROR_TYPE,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_CHOICE_COUNT,
    GEN_AI_REQUEST_MAX_TOKENS,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_REQUEST_STREAM,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    OPERATION_NAMES,
    PROVIDER,
    REQUEST_ID,
    STEP_SPANS,
    TENANT,
    TRACE_ID_HEADER,
    USAGE_ESTIMATED,
    USAGE_TYPE,
)

_PROPAGATOR = TraceContextTextMapPropagator()
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")

Step = Callable[[Any], Awaitable[None]]


class _AsgiHeaders(Getter):
    """Reads W3C trace headers from an ASGI scope's header list (lower-case byte names)."""

    def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier if k == name]
        return values or None

    def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_ASGI = _AsgiHeaders()


@dataclass
class RequestTrace:
    """The spans of one request that others hang from (kept on RequestContext.trace)."""

    root: Span
    root_context: Context
    recording: bool
    dispatch_context: Context | None = None

    @property
    def trace_id(self) -> str:
        return format_trace_id(self.root.get_span_context().trace_id)

    def parent(self) -> Context:
        """Where dispatch-time spans hang: the dispatch span once it exists, else the root."""
        return self.dispatch_context or self.root_context


def step_span_name(step: Any) -> str:
    """The span name of a request-path step (by class; PIIGuard -> govllm.pii_guard)."""
    cls = type(step).__name__
    return STEP_SPANS.get(cls) or "govllm." + _SNAKE.sub("_", cls).lower()


def error_code(exc: BaseException) -> str:
    """The govllm error code an exception stands for (never its message, which may quote input)."""
    error = getattr(exc, "error", exc)  # dispatch's _Failed wraps an APIError
    code = getattr(error, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


def request_attributes(ctx: Any) -> dict[str, Any]:
    """The root span's attributes once the request has ended: GenAI conventions plus governance.

    Only values the router itself decided or counted: the model names are the spec's (a name
    the client typed that matches nothing is not recorded), token counts are the billed ones.
    """
    out: dict[str, Any] = {REQUEST_ID: ctx.request_id,
                           GEN_AI_OPERATION_NAME: OPERATION_NAMES.get(ctx.operation, ctx.operation),
                           GEN_AI_REQUEST_STREAM: bool(ctx.stream)}
    if ctx.status is not None:
        out["http.response.status_code"] = ctx.status
    if ctx.error_code:
        out[ERROR_TYPE] = ctx.error_code
    if ctx.candidates and ctx.requested_model:
        out[GEN_AI_REQUEST_MODEL] = ctx.requested_model  # an id or alias the spec declares
    if ctx.model is not None:
        out[GEN_AI_RESPONSE_MODEL] = ctx.model.id
        out[GEN_AI_PROVIDER_NAME] = (ctx.model.endpoint.terms.provider if ctx.model.endpoint
                                     else PROVIDER)
    if ctx.tenant is not None:
        out[TENANT] = ctx.tenant.id
        out[USAGE_TYPE] = ctx.usage_type or ctx.tenant.usage_type
    if ctx.confidentiality is not None:
        out[CONFIDENTIALITY] = ctx.confidentiality
    payload = ctx.payload or {}
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        out[GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    n = payload.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n != 1:
        out[GEN_AI_REQUEST_CHOICE_COUNT] = n
    if ctx.usage:
        out[GEN_AI_USAGE_INPUT_TOKENS] = int(ctx.usage.get("prompt_tokens") or 0)
        out[GEN_AI_USAGE_OUTPUT_TOKENS] = int(ctx.usage.get("completion_tokens") or 0)
        if ctx.usage_estimated:
            out[USAGE_ESTIMATED] = True
    if ctx.stream and ctx.first_byte_at is not None:
        out[GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = round(ctx.first_byte_at - ctx.started_at, 6)
    if ctx.attempts:
        out[ATTEMPTS] = len(ctx.attempts)
    return out


class RequestTracer:
    """Creates and ends the spans of requests; one per router replica.

    The router calls `begin` when a model request arrives and `end` after its finishers; the
    request-path steps, the audit hooks and the dispatcher are wrapped once at start-up. When
    a request is not sampled its spans are not created at all (the trace id still is, and the
    engine is told not to record either).
    """

    def __init__(self, tracer: Tracer, provider: TracerProvider | None = None):
        self._tracer = tracer
        self._provider = provider

    # -- the request ------------------------------------------------------------------------------
    def begin(self, ctx: Any) -> RequestTrace:
        """Start the request's root span, continuing the caller's traceparent if it sent one."""
        scope = ctx.scope
        parent = _PROPAGATOR.extract(scope["headers"], getter=_ASGI)
        root = self._tracer.start_span(
            f"{scope['method']} {scope['path']}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
            record_exception=False, set_status_on_exception=False,
        )
        trace = RequestTrace(root, set_span_in_context(root), root.is_recording())
        ctx.trace = trace
        ctx.response_headers.append((TRACE_ID_HEADER.encode(), trace.trace_id.encode()))
        return trace

    def end(self, ctx: Any) -> None:
        """Finish the root span with what the request came to; never raises."""
        trace: RequestTrace | None = ctx.trace
        if trace is None or not trace.recording:
            return
        try:
            root = trace.root
            attributes = request_attributes(ctx)
            root.set_attributes(attributes)
            if GEN_AI_REQUEST_MODEL in attributes:
                root.update_name(f"{attributes[GEN_AI_OPERATION_NAME]} {attributes[GEN_AI_REQUEST_MODEL]}")
            if ctx.status is not None and ctx.status >= 500 or ctx.error_code == "internal_error":
                root.set_status(Status(StatusCode.ERROR, ctx.error_code))
            root.end()
        except Exception:  # tracing must never fail a request
            pass

    # -- child spans ------------------------------------------------------------------------------
    @contextmanager
    def span(self, ctx: Any, name: str, *, parent: Context | None = None,
             kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Span | None]:
        """A child span of the request (of `parent`, default the dispatch span or the root).

        An exception passing through marks it failed with the error's code only.
        """
        trace: RequestTrace | None = ctx.trace
        if trace is None or not trace.recording:
            yield None
            return
        span = self._tracer.start_span(name, context=parent or trace.parent(), kind=kind,
                                       record_exception=False, set_status_on_exception=False)
        try:
            yield span
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            span.end()

    def steps(self, steps: Sequence[Step]) -> list[Step]:
        """The request-path steps, each in its own span under the root."""
        return [self._traced_step(step) for step in steps]

    def _traced_step(self, step: Step) -> Step:
        name = step_span_name(step)

        async def traced(ctx: Any) -> None:
            trace: RequestTrace | None = ctx.trace
            if trace is None or not trace.recording:
                await step(ctx)
                return
            with self.span(ctx, name, parent=trace.root_context):
                await step(ctx)

        traced.__name__ = traced.__qualname__ = name
        traced.step = step  # type: ignore[attr-defined]  # the unwrapped step, for tests
        return traced

    def hook(self, name: str, hook: Step) -> Step:
        """A dispatch hook (the audit records) in its own span under the dispatch span."""

        async def traced(ctx: Any) -> None:
            with self.span(ctx, name):
                await hook(ctx)

        return traced

    def dispatch(self, forward: Callable[[Any, Any], Awaitable[None]]
                 ) -> Callable[[Any, Any], Awaitable[None]]:
        """The dispatcher's `forward` in the dispatch span, which later spans hang from."""

        async def traced(ctx: Any, send: Any) -> None:
            trace: RequestTrace | None = ctx.trace
            if trace is None or not trace.recording:
                await forward(ctx, send)
                return
            with self.span(ctx, DISPATCH_SPAN, parent=trace.root_context) as span:
                trace.dispatch_context = set_span_in_context(span)
                try:
                    await forward(ctx, send)
                finally:
                    trace.dispatch_context = None

        return traced

    def admission(self, ctx: Any):
        """The wait for a model slot (admission control)."""
        return self.span(ctx, ADMISSION_SPAN)

    @contextmanager
    def attempt(self, ctx: Any, model: Any, ep: Any, path: str,
                headers: dict[str, str]) -> Iterator[dict[str, str]]:
        """One try on one replica: a CLIENT span whose W3C context goes upstream.

        Yields the headers to send: `headers` plus `traceparent` (and `tracestate`), so vLLM's
        request span becomes this span's child. Vendor endpoints are not sent these headers
        (the dispatcher builds theirs separately): trace ids stay inside the platform.
        """
        trace: RequestTrace | None = ctx.trace
        if trace is None:
            yield headers
            return
        sent = dict(headers)
        if not trace.recording:  # the engine must not record either: pass the unsampled context
            _PROPAGATOR.inject(sent, context=trace.root_context)
            yield sent
            return
        parts = urlsplit(ep.url)
        attributes: dict[str, Any] = {"http.request.method": "POST", "url.path": path,
                                      "server.address": parts.hostname or "", "govllm.model": model.id,
                                      "govllm.replica": ep.replica_id}
        if parts.port:
            attributes["server.port"] = parts.port
        with self.span(ctx, f"POST {path}", kind=SpanKind.CLIENT) as span:
            span.set_attributes(attributes)
            _PROPAGATOR.inject(sent, context=set_span_in_context(span))
            done = len(ctx.attempts)
            try:
                yield sent
            finally:
                if len(ctx.attempts) > done:  # "<model>@<url>: <outcome>", the router's own words
                    span.set_attribute("govllm.attempt.outcome", ctx.attempts[-1].rpartition(": ")[2])

    # -- lifecycle --------------------------------------------------------------------------------
    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export what is queued now (tests, benchmarks); False if it did not finish in time."""
        return self._provider.force_flush(int(timeout_s * 1000)) if self._provider else True

    def shutdown(self) -> None:
        """Flush what is queued (bounded by the export timeout) and stop the exporter thread."""
        if self._provider is not None:
            self._provider.shutdown()


def _failed(span: Span, exc: BaseException) -> None:
    code = error_code(exc)
    span.set_attribute(ERROR_TYPE, code)
    span.set_status(Status(StatusCode.ERROR, code))


def build_tracer(settings: TracingSettings, *, app: str, instance: str,
                 exporter: SpanExporter | None = None) -> RequestTracer:
    """The router replica's tracer: parent-based ratio sampling, batch export over OTLP/HTTP.

    `exporter` replaces the OTLP exporter (unit tests use the SDK's in-memory one). The
    provider is the replica's own, not the process-global one, so nothing else in the
    process (Ray, libraries) exports through it or changes it.
    """
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.endpoint, timeout=settings.export_timeout_s)
    resource = Resource.create({"service.name": ROUTER_SERVICE, "service.namespace": app,
                                "service.instance.id": instance})
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
                              resource=resource)
    provider.add_span_processor(BatchSpanProcessor(
        exporter, max_queue_size=settings.max_queue_spans,
        schedule_delay_millis=settings.export_interval_s * 1000,
        max_export_batch_size=settings.max_batch_spans,
        export_timeout_millis=settings.export_timeout_s * 1000,
    ))
    quiet_export_logs()
    return RequestTracer(provider.get_tracer("govllm.router"), provider)
