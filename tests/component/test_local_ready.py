"""`govllm serve` says what it waits for: a real HTTP server answering /readyz like the router."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from govllm.local import awaiting, wait_ready


def _server(bodies: list[tuple[int, dict]]):
    """Answers /readyz with the given (status, body) in turn, the last one forever."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            status, body = bodies.pop(0) if len(bodies) > 1 else bodies[0]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_wait_ready_reports_the_models_it_waits_for():
    loading = {"status": "not_ready", "models": {"a": {"ready_replicas": 1}, "b": {"ready_replicas": 0}}}
    ready = {"status": "ready", "models": {"a": {"ready_replicas": 1}, "b": {"ready_replicas": 1}}}
    server, url = _server([(503, loading), (503, loading), (200, ready)])
    lines: list[str] = []
    try:
        assert wait_ready(url, 30, report=lines.append, interval_s=60, detail=lambda: "Serve: model:b UPDATING")
    finally:
        server.shutdown()
    # said once (unchanged state within the interval), naming the model and Serve's view
    assert len(lines) == 1 and "b (engines loading)" in lines[0] and "a," not in lines[0]
    assert "Serve: model:b UPDATING" in lines[0]


def test_a_timeout_says_what_was_missing():
    server, url = _server([(503, {"status": "not_ready", "models": {"m": {"ready_replicas": 0}}})])
    try:
        with pytest.raises(TimeoutError, match="without a ready replica: m"):
            wait_ready(url, 1.2)
    finally:
        server.shutdown()


def test_awaiting_names_a_silent_router():
    assert "router does not answer" in awaiting({})

