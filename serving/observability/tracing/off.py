"""Tracing switched off: what the dispatcher calls instead of serving/observability/tracing/spans.py.

Each call returns a do-nothing context manager (for an attempt, one that hands back the
headers unchanged), so the request path has no tracing branches and imports no
OpenTelemetry; the cost is a few hundred nanoseconds per request (docs/benchmarks.md).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

_NOTHING: AbstractContextManager[None] = nullcontext()


class NoTracing:
    """The RequestTracer interface the dispatcher uses, doing nothing."""

    def admission(self, ctx: Any) -> AbstractContextManager[None]:
        return _NOTHING

    def attempt(self, ctx: Any, model: Any, ep: Any, path: str,
                headers: dict[str, str]) -> AbstractContextManager[dict[str, str]]:
        return nullcontext(headers)


NO_TRACING = NoTracing()
