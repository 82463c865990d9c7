"""One line a minute, not one per span, when spans cannot be exported.

While a collector is down the SDK's batch processor logs a warning for every span it drops
and the OTLP exporter an error for every failed batch. Under load that floods the replica's
log, and in an engine the drop warning is written from vLLM's output-processing loop, once
per finished request. `quiet_export_logs` lets one record a minute through on each of those
loggers, in the router (build_tracer) and in each model replica that exports (llm_server).
"""

from __future__ import annotations

import logging
import time

#: The batch processor ("Queue full, dropping Span.") and the OTLP/HTTP span exporter.
NOISY_LOGGERS = ("opentelemetry.sdk._shared_internal",
                 "opentelemetry.exporter.otlp.proto.http.trace_exporter")


class RateLimitedLog(logging.Filter):
    """Lets one record through per `every_s` seconds."""

    def __init__(self, every_s: float = 60.0):
        super().__init__()
        self._every_s = every_s
        self._last = -every_s

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self._every_s:
            return False
        self._last = now
        return True


def quiet_export_logs(every_s: float = 60.0) -> None:
    """Rate-limit the exporters' failure logs in this process (idempotent)."""
    for name in NOISY_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, RateLimitedLog) for f in log.filters):
            log.addFilter(RateLimitedLog(every_s))
