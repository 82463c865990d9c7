"""Thin ASGI helpers for the router's hot path.

The router is a plain ASGI callable rather than a FastAPI app: per request it
does a handful of dictionary lookups and, for streams, forwards bytes. A web
framework's dependency injection and response models would cost more CPU per
request than everything else the router does (see docs/benchmarks.md), and on
small nodes that CPU is taken from the engine.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from serving.request import APIError, Scope, encode_error, header

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing (413) as soon as it exceeds `limit` bytes.

    A declared Content-Length over the limit is refused before reading, and a
    chunked upload is cut off the moment it crosses the limit, so an oversized
    body never sits in router memory.
    """
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "Content-Length is not a number.", code="invalid_content_length") from None
        if size > limit:
            raise _too_large(size, limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise _too_large(total, limit, at_least=True)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(size: int, limit: int, *, at_least: bool = False) -> APIError:
    qualifier = "at least " if at_least else ""
    return APIError(
        413,
        f"Request body is {qualifier}{size} bytes; the limit is {limit} bytes. "
        "Send a shorter prompt or ask the operator to raise router.max_body_bytes.",
        code="request_too_large",
    )


class ClientDisconnected(Exception):
    """The client went away; nothing can be sent any more."""


class ClientTooSlow(Exception):
    """The client took no data for `router.client_send_timeout_s`: nothing more is sent to it
    (another send would wait the same way), and its admission slot is freed."""


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": JSON_HEADERS + [(b"content-length", str(len(body)).encode())] + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


#: Retry-After of a 429/503 whose origin named none (e.g. an engine's own 503 relayed):
#: every 429 and 503 the router sends carries one, so clients back off instead of hammering.
DEFAULT_RETRY_AFTER_S = 2


async def send_error(send: Send, exc: APIError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()] + (headers or [])
    if exc.status in (429, 503) and not any(k == b"retry-after" for k, _ in extra):
        extra.append((b"retry-after", str(DEFAULT_RETRY_AFTER_S).encode()))
    await send_json(send, exc.status, encode_error(exc), extra)


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge ASGI lifespan events; the router's state lives in its deployment."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
