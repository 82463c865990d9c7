"""An OTLP/HTTP traces sink for `make bench`: a stand-in for an OpenTelemetry Collector.

The benchmark's traced stack exports its spans here (127.0.0.1, protobuf on POST /v1/traces,
answered 200 as a collector's `otlp` receiver does). It decodes each request with
`opentelemetry-proto` only to count the spans, so the report can show that the traced stack
really exported while it was measured; nothing is kept.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from govllm.runtime_env import free_port


class OTLPSink:
    """Counts the spans posted to it; `url` is a spec's `tracing.endpoint`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> OTLPSink:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        sink, answer = self, ExportTraceServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                with sink._lock:
                    sink.spans += count
                    sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
