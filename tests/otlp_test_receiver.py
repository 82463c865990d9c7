"""A test receiver for OTLP/HTTP traces on 127.0.0.1: a stand-in for an OpenTelemetry Collector.

A real collector (`otelcol`) is a Go binary that neither PyPI nor Debian ships, so the tests
receive the stack's spans here: a real HTTP server on a real socket that accepts what a
collector's `otlp` receiver accepts on its HTTP port (POST /v1/traces, protobuf
`ExportTraceServiceRequest`, optionally gzip) and decodes it with `opentelemetry-proto`, the
same message classes the exporters encode with. Nothing is inferred: every span is kept as
received, with its resource, ids, parent, attributes and events.

It can also misbehave like a collector in trouble: `hold()` keeps export requests open
without answering (a hung collector), `failing()` answers 503, and `stop()`/`start()` close
and reopen the port (a collector that is down).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from govllm.runtime_env import free_port

PATH = "/v1/traces"
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


@dataclass
class ReceivedSpan:
    """One span as a collector would store it (ids in lower-case hex)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    status_message: str
    resource: dict[str, Any]
    start_ns: int
    end_ns: int

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))

    def strings(self) -> Iterator[str]:
        """Every text the span carries: name, attribute and event values, status, resource."""
        yield self.name
        yield self.status_message
        for source in (self.attributes, self.resource,
                       *(attrs for _, attrs in self.events)):
            for key, value in source.items():
                yield key
                yield str(value)
        for name, _ in self.events:
            yield name


@dataclass
class OTLPTestReceiver:
    """The receiver; `url` is what a spec's tracing.endpoint names."""

    port: int = field(default_factory=free_port)
    max_spans: int = 50_000  # a whole test session's spans stay bounded in memory
    spans: deque[ReceivedSpan] = field(default_factory=deque)
    requests: int = 0
    held: int = 0  # export requests being held open right now
    _mode: str = "ok"
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> OTLPTestReceiver:
        receiver = self
        if self.spans.maxlen != self.max_spans:
            self.spans = deque(self.spans, maxlen=self.max_spans)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._received(self.path, self.headers.get("Content-Encoding"), body, self)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port: exporters now get connection refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- misbehaviour -----------------------------------------------------------------------------
    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep every export request open, unanswered, until the block ends (a hung collector)."""
        self._release.clear()
        self._mode = "hold"
        try:
            yield
        finally:
            self._mode = "ok"
            self._release.set()

    @contextmanager
    def failing(self) -> Iterator[None]:
        """Answer every export with 503 (an overloaded collector)."""
        self._mode = "fail"
        try:
            yield
        finally:
            self._mode = "ok"

    # -- reading ----------------------------------------------------------------------------------
    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 60.0
                 ) -> list[ReceivedSpan]:
        """Spans received so far, once `done(spans)` holds (or raise after timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.snapshot()
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({(s.service, s.name) for s in spans})
                raise AssertionError(f"the spans wanted did not arrive within {timeout_s:g} s; "
                                     f"received {len(spans)}: {names[:40]}")
            time.sleep(0.2)

    # -- the endpoint -----------------------------------------------------------------------------
    def _received(self, path: str, encoding: str | None, body: bytes,
                  handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests += 1
        if path != PATH:
            self._answer(handler, 404, b"")
            return
        if self._mode == "hold":
            with self._lock:
                self.held += 1
            try:
                self._release.wait(300)
            finally:
                with self._lock:
                    self.held -= 1
            self._answer(handler, 503, b"")  # the exporter gave up long ago; nothing is kept
            return
        if self._mode == "fail":
            self._answer(handler, 503, b"")
            return
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        decoded = list(_spans(request))
        with self._lock:
            self.spans.extend(decoded)
        self._answer(handler, 200, ExportTraceServiceResponse().SerializeToString())

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/x-protobuf")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:  # the exporter timed out and closed the connection
            pass


def _spans(request: ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    name=span.name,
                    kind=KINDS.get(span.kind, str(span.kind)),
                    attributes={kv.key: _value(kv.value) for kv in span.attributes},
                    events=[(e.name, {kv.key: _value(kv.value) for kv in e.attributes})
                            for e in span.events],
                    status_code=span.status.code,
                    status_message=span.status.message,
                    resource=resource,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                )
