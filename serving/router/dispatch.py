"""Forwarding a validated request to a model replica and relaying the answer.

Streams pass through as bytes: the router re-frames them on SSE event
boundaries (so it never forwards half an event) and inspects only the one
event that carries `usage`, found with a byte search rather than by parsing
every chunk. The router always asks the engine for usage so that token
accounting works for every stream; when the client did not ask for it, that
event is removed again before it reaches the client.

Disconnects: when the client goes away, Ray Serve cancels this coroutine (or
the next `send` fails); closing the upstream response then closes the
connection to the replica, and vLLM aborts the generation.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from serving.config import ModelRoute, RouterSettings
from serving.router.asgi import Send
from serving.router.endpoints import Endpoint, EndpointTable
from serving.router.errors import APIError
from serving.router.pipeline import RequestContext

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_USAGE_MARK = b'"choices":[],"usage":{'
_EVENT_END = b"\n\n"
_DONE = b"data: [DONE]\n\n"
_MAX_ERROR_BODY = 64 * 1024
_CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError)


async def _nothing(ctx: RequestContext) -> None:
    return None


class Dispatcher:
    """Forwards to model replicas.

    `before_end` runs after the answer has been produced and before its last
    bytes (the non-streaming body, or a stream's `data: [DONE]`) are sent: the
    audit trail uses it to make the record durable first, so a client that saw
    a complete answer can rely on it being recorded. Tokens never wait for it.
    """

    def __init__(self, table: EndpointTable, settings: RouterSettings, *, before_end=_nothing):
        self._table = table
        self._settings = settings
        self._before_end = before_end
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(
                    total=self._settings.request_timeout_s,
                    sock_connect=self._settings.upstream_connect_timeout_s,
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _body_for(self, ctx: RequestContext, model: ModelRoute) -> bytes:
        """The upstream body: the client's bytes unless the model name or usage option must change."""
        force_usage = ctx.stream and not ctx.client_wants_usage
        if ctx.requested_model == model.id and not force_usage:
            return ctx.raw_body
        payload = dict(ctx.payload or {})
        payload["model"] = model.id
        if force_usage:
            options = dict(payload.get("stream_options") or {})
            options["include_usage"] = True
            payload["stream_options"] = options
        return json.dumps(payload, ensure_ascii=False).encode()

    async def forward(self, ctx: RequestContext, send: Send) -> None:
        """Send the request to the first reachable replica of the first available candidate."""
        path = _PATHS[ctx.operation]
        headers = {"Content-Type": "application/json", "X-Request-Id": ctx.request_id}
        tried: set[str] = set()
        for model in ctx.candidates:
            body = self._body_for(ctx, model)
            while (ep := self._table.pick(model.id, exclude=frozenset(tried))) is not None:
                try:
                    resp = await self._client().post(ep.url + path, data=body, headers=headers)
                except _CONNECT_ERRORS:
                    # Never reached the engine: safe to try another replica or model.
                    self._table.mark_down(ep)
                    tried.add(ep.replica_id)
                    continue
                except TimeoutError:
                    raise APIError(
                        504, f"Model '{model.id}' did not answer in time.", code="upstream_timeout"
                    ) from None
                ctx.model, ctx.upstream = model, ep.url
                ep.inflight += 1
                try:
                    await self._relay(ctx, ep, resp, send)
                finally:
                    ep.inflight -= 1
                    resp.close()  # a no-op after a full read; aborts the engine otherwise
                return
        names = ", ".join(m.id for m in ctx.candidates)
        raise APIError(
            503,
            f"No replica of model {names} is ready to take requests right now; retry shortly.",
            code="model_unavailable",
            headers={"Retry-After": "5"},
        )

    async def _relay(self, ctx: RequestContext, ep: Endpoint, resp: Any, send: Send) -> None:
        if resp.status != 200:
            raw = await resp.content.read(_MAX_ERROR_BODY)
            raise await self._upstream_error(ctx, ep, resp.status, raw)
        content_type = resp.headers.get("Content-Type", "application/json")
        start_headers = [
            (b"content-type", content_type.encode()),
            (b"x-govllm-model", ctx.model.id.encode()),
        ]
        if not content_type.startswith("text/event-stream"):
            body = await resp.read()
            ctx.usage = _usage_of(body)
            ctx.status = 200
            ctx.response_body = body
            await self._before_end(ctx)
            start_headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": start_headers})
            ctx.first_byte_at = time.perf_counter()
            await send({"type": "http.response.body", "body": body})
            return
        start_headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        await send({"type": "http.response.start", "status": 200, "headers": start_headers})
        ctx.status = 200
        pending = done = b""
        async for data in resp.content.iter_any():
            pending += data
            cut = pending.rfind(_EVENT_END)
            if cut < 0:
                continue
            out, pending = pending[: cut + 2], pending[cut + 2 :]
            if _USAGE_MARK in out:
                out = self._take_usage(ctx, out)
            if out.endswith(_DONE):
                done, out = _DONE, out[: -len(_DONE)]
            if out:
                ctx.response_chunks.append(out)
                await send({"type": "http.response.body", "body": out, "more_body": True})
                if ctx.first_byte_at is None:
                    ctx.first_byte_at = time.perf_counter()
        if pending:
            ctx.response_chunks.append(pending)
            await send({"type": "http.response.body", "body": pending, "more_body": True})
        await self._before_end(ctx)
        await send({"type": "http.response.body", "body": done, "more_body": False})

    def _take_usage(self, ctx: RequestContext, block: bytes) -> bytes:
        """Record the usage event's counts; drop the event unless the client asked for usage."""
        mark = block.find(_USAGE_MARK)
        start = block.rfind(b"data: ", 0, mark)
        end = block.find(_EVENT_END, mark) + 2
        try:
            ctx.usage = json.loads(block[start + 6 : end - 2]).get("usage")
        except ValueError:
            return block
        if ctx.client_wants_usage:
            return block
        return block[:start] + block[end:]

    async def _upstream_error(self, ctx: RequestContext, ep: Endpoint, status: int, raw: bytes) -> APIError:
        """Turn a replica's error into ours: same status and message, OpenAI vocabulary."""
        try:
            err = json.loads(raw)["error"]
            message, param, code = str(err["message"]), err.get("param"), err.get("code")
        except (ValueError, KeyError, TypeError):
            message, param, code = raw.decode("utf-8", "replace")[:500] or f"HTTP {status}", None, None
        if status == 400 and "maximum context length" in message:
            return await self._context_length_error(ctx, ep, message)
        if not isinstance(code, str) or code.isdigit():
            code = "upstream_error" if status >= 500 else "invalid_value"
        return APIError(status, message, code=code, param=param if isinstance(param, str) else None)

    async def _context_length_error(self, ctx: RequestContext, ep: Endpoint, vllm_message: str) -> APIError:
        """A context-length refusal with the exact prompt length.

        vLLM truncates over-long prompts while checking them and then reports
        only "at least N" tokens; on this rare path the router asks the same
        replica's tokenizer for the exact count.
        """
        payload = ctx.payload or {}
        requested = payload.get("max_completion_tokens") or payload.get("max_tokens")
        param = "messages" if ctx.operation == "chat" else "prompt"
        probe: dict[str, Any] = {"model": ctx.model.id}
        if ctx.operation == "chat":
            probe.update(messages=payload.get("messages"), add_generation_prompt=True)
        else:
            probe["prompt"] = payload.get("prompt")
        try:
            async with self._client().post(ep.url + "/tokenize", json=probe) as resp:
                counted = await resp.json()
            prompt_tokens, limit = int(counted["count"]), int(counted["max_model_len"])
        except Exception:
            return APIError(400, vllm_message, code="context_length_exceeded", param=param)
        ask = f" plus {requested} requested output tokens" if requested else ""
        return APIError(
            400,
            f"This model's maximum context length is {limit} tokens, but the request has "
            f"{prompt_tokens} prompt tokens{ask}. Shorten the {param} or lower max_tokens.",
            code="context_length_exceeded",
            param=param,
        )


def _usage_of(body: bytes) -> dict | None:
    try:
        return json.loads(body).get("usage")
    except (ValueError, AttributeError):
        return None
