"""ASGI middleware for the test vendor server (vLLM's `--middleware`): records what it receives.

Each request's path and headers are appended as one JSON line to the file named by
GOVLLM_TEST_VENDOR_HEADERS, so a test can check which credential reached the vendor and
that nothing of the client's (its key, its own headers) did.
"""

from __future__ import annotations

import json
import os


async def record(request, call_next):
    path = os.environ.get("GOVLLM_TEST_VENDOR_HEADERS")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"path": request.url.path, "headers": dict(request.headers)}) + "\n")
    return await call_next(request)
