"""govllm's access log in Ray Serve's log: JSON keys with encoding JSON, not a JSON string.

Ray Serve's own logger setup for a component (`configure_component_logger`, what each replica
runs) writes into a temporary directory; the router's AccessLog then logs one request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from ray.serve._private.logging_utils import configure_component_logger
from ray.serve.schema import LoggingConfig

from serving.logs import attach_to_serve_logs
from serving.request import Principal, RequestContext
from serving.router.pipeline import AccessLog


@pytest.fixture
def serve_log(tmp_path):
    serve_logger, govllm_logger = logging.getLogger("ray.serve"), logging.getLogger("govllm")
    saved = (list(serve_logger.handlers), serve_logger.propagate, serve_logger.level)
    saved_govllm = (list(govllm_logger.handlers), govllm_logger.propagate, govllm_logger.level)

    def configure(encoding: str) -> Path:
        configure_component_logger(component_name="router", component_id="test-replica",
                                   logging_config=LoggingConfig(encoding=encoding, logs_dir=str(tmp_path)),
                                   max_bytes=10**7, backup_count=1)
        attach_to_serve_logs()
        return tmp_path

    yield configure
    for h in serve_logger.handlers:
        h.flush()
    serve_logger.handlers[:], serve_logger.propagate, serve_logger.level = saved
    # later tests (caplog) need govllm's records to reach the root logger again
    govllm_logger.handlers[:], govllm_logger.propagate, govllm_logger.level = saved_govllm


def _request() -> RequestContext:
    ctx = RequestContext(request_id="a" * 32, operation="chat", scope={"headers": [], "client": ("10.0.0.5", 4711)},
                         client_request_id="client-7")
    ctx.principal = Principal(tenant="city", user="alice", method="api_key")
    ctx.requested_model, ctx.status = "default", 200
    ctx.usage = {"prompt_tokens": 5, "completion_tokens": 3}
    ctx.payload = {"messages": [{"role": "user", "content": "機密の本文"}]}
    return ctx


def _lines(directory: Path) -> list[str]:
    for h in logging.getLogger("ray.serve").handlers:
        h.flush()
    return [line for f in directory.glob("*.log") for line in f.read_text().splitlines() if line]


def test_access_log_fields_are_json_keys(serve_log):
    directory = serve_log("JSON")
    asyncio.run(AccessLog()(_request()))
    records = [json.loads(line) for line in _lines(directory)]
    (record,) = [r for r in records if r.get("govllm_request_id") == "a" * 32]
    assert record["tenant"] == "city" and record["model"] == "default" and record["status"] == 200
    assert record["client_request_id"] == "client-7" and record["usage"]["completion_tokens"] == 3
    assert record["message"] == f"chat default 200 tenant=city govllm_request_id={'a' * 32}"
    assert record["component_name"] == "router" and record["levelname"] == "INFO"
    assert "機密" not in json.dumps(record, ensure_ascii=False)  # never the prompt


def test_text_encoding_names_the_request_in_the_line(serve_log):
    """TEXT (Serve's format) shows no extra fields: the message itself names the key ones."""
    directory = serve_log("TEXT")
    asyncio.run(AccessLog()(_request()))
    (line,) = [line for line in _lines(directory) if "chat default 200" in line]
    assert line.startswith("INFO") and " router test-replica " in line
    assert "tenant=city" in line and f"govllm_request_id={'a' * 32}" in line
