"""CPU cost of the router's access-log record, before and after it reached Serve's log.

`python -m loadtest.bench_access_log` times AccessLog (serving/router/pipeline.py) per request
with no handler on the govllm loggers (what replicas had before: the record was dropped) and
with Ray Serve's own component logger set up as a replica sets it up (JSON file, plus stderr
when RAY_SERVE_LOG_TO_STDERR is on, its default), in one process, median of 5 x 2000 calls.
It runs in a finisher, after the response, so it costs CPU, not latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import statistics
import tempfile
import time

from serving.logs import attach_to_serve_logs
from serving.request import Principal, RequestContext
from serving.router.pipeline import AccessLog


def _ctx() -> RequestContext:
    c = RequestContext(request_id="a" * 32, operation="chat", scope={"headers": [], "client": ("10.0.0.5", 4711)})
    c.principal = Principal(tenant="city", user="alice", method="api_key")
    c.requested_model, c.status = "tiny-llama-ja", 200
    c.usage = {"prompt_tokens": 5, "completion_tokens": 3}
    return c


async def _per_call_us(n: int) -> float:
    log, contexts = AccessLog(), [_ctx() for _ in range(n)]
    start = time.perf_counter()
    for c in contexts:
        await log(c)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig

    before = statistics.median(asyncio.run(_per_call_us(2000)) for _ in range(5))
    with tempfile.TemporaryDirectory() as logs, contextlib.redirect_stderr(io.StringIO()):
        configure_component_logger(component_name="router", component_id="bench",
                                   logging_config=LoggingConfig(encoding="JSON", logs_dir=logs),
                                   max_bytes=10**9, backup_count=1)
        attach_to_serve_logs()
        after = statistics.median(asyncio.run(_per_call_us(2000)) for _ in range(5))
    print(f"access log per request: {before:.1f} µs without a handler (dropped), "
          f"{after:.1f} µs into Serve's JSON log")


if __name__ == "__main__":
    main()
