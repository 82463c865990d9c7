"""govllm's log records in Ray Serve's logs, as structured fields.

Ray Serve configures only its own logger ("ray.serve", not propagating) in each replica: a
record of another logger ("govllm.access", "govllm.quota", ...) reaches no handler, so the
router's access log and warnings never showed in the replica's Serve log. `attach_to_serve_logs`
hands every "govllm.*" record to the handlers Serve installed, with Serve's own filters and
formatter: with `LoggingConfig(encoding="JSON")` (the default of `router.log_encoding`) each line
is one JSON object, Serve's context (replica, deployment, its own `request_id`: the client's
x-request-id or HAProxy's unique id) plus govllm's fields.

Fields go in `extra={"ray_serve_extra_fields": {...}}`: Ray's formatters flatten that dict into
top-level JSON keys (TEXT encoding appends them as key=value). govllm's request id is
`govllm_request_id` because Serve's context filter owns `request_id`.
"""

from __future__ import annotations

import logging
from typing import Any

SERVE_LOGGER = "ray.serve"  # ray.serve._private.constants.SERVE_LOGGER_NAME
EXTRA_FIELDS = "ray_serve_extra_fields"  # ray.serve._private.constants.SERVE_LOG_EXTRA_FIELDS


class _ToServeHandlers(logging.Handler):
    """Passes records to whatever handlers Serve's logger has now (they are set up per replica)."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger(SERVE_LOGGER).handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def attach_to_serve_logs(level: int = logging.INFO) -> None:
    """Route every "govllm.*" logger into the replica's Serve log (idempotent)."""
    root = logging.getLogger("govllm")
    root.setLevel(level)
    if not any(isinstance(h, _ToServeHandlers) for h in root.handlers):
        root.addHandler(_ToServeHandlers())
    root.propagate = False  # not also to the root logger (a second, unformatted copy)


def serve_logging_config(encoding: str) -> dict[str, Any]:
    """The `logging_config` of govllm's deployments (Ray Serve's LoggingConfig fields)."""
    return {"encoding": encoding, "enable_access_log": True}


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a record whose `values` become structured fields of its line."""
    return {EXTRA_FIELDS: values}
