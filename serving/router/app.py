"""The router's HTTP surface: OpenAI endpoints plus health probes.

Routes:
  GET  /v1/models, /v1/models/{id}   models and their aliases (authenticated)
  POST /v1/chat/completions          chat, streaming or not (authenticated)
  POST /v1/completions               text completion (authenticated)
  POST /v1/feedback                  rate an answer of your tenant (authenticated)
  GET  /healthz                      the router process answers
  GET  /readyz                       every configured model has a ready replica
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from serving.config import ServingConfig
from serving.router.asgi import (
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    header,
    lifespan,
    read_body,
    send_error,
    send_json,
)
from serving.router.dispatch import Dispatcher
from serving.router.endpoints import EndpointTable
from serving.router.errors import APIError
from serving.router.pipeline import (
    AccessLog,
    Finisher,
    ParseRequest,
    RequestContext,
    ResolveModel,
    Step,
)

logger = logging.getLogger("govllm.router")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_GENERATION = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class RouterApp:
    """ASGI callable; one instance per router replica.

    `extra_steps` run after the model is resolved (confidentiality policy, quota
    admission); `seal` makes the request's audit record durable before the last
    bytes of its response; `finishers` run after every request (settlement,
    access log) and never delay the response.
    """

    def __init__(
        self,
        config: ServingConfig,
        *,
        table: EndpointTable,
        authenticate: Step,
        finishers: list[Finisher] | None = None,
        extra_steps: list[Step] | None = None,
        seal: Finisher | None = None,
        feedback=None,
    ):
        self.config = config
        self.table = table
        self._seal = seal
        self.dispatcher = Dispatcher(table, config.router, before_end=seal or _nothing)
        self._authenticate = authenticate
        self._feedback = feedback
        self.generation_steps: list[Step] = [
            authenticate,
            ParseRequest(),
            ResolveModel(config),
            *(extra_steps or []),
        ]
        self.finishers: list[Finisher] = finishers if finishers is not None else [AccessLog()]
        self.quota = None  # set by the deployment; /readyz reports the shared store's state
        self._created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await lifespan(receive, send)
            return
        if kind != "http":
            return
        path, method = scope["path"], scope["method"]
        operation = _GENERATION.get(path)
        if operation is not None:
            if method != "POST":
                await send_error(send, _method_not_allowed(path, "POST"))
                return
            await self._generate(operation, scope, receive, send)
        elif path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await self._readyz(send)
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            await self._models(scope, send)
        elif path == "/v1/feedback" and self._feedback is not None:
            if method != "POST":
                await send_error(send, _method_not_allowed(path, "POST"))
                return
            await self._rate(scope, receive, send)
        else:
            await send_error(
                send,
                APIError(404, f"No route {method} {path}. See /v1/models for the API.", code="unknown_route"),
            )

    def _request_id(self, scope: Scope) -> str:
        given = header(scope, b"x-request-id")
        if given:
            text = given.decode("latin-1")
            if _SAFE_REQUEST_ID.match(text):
                return text
        return uuid.uuid4().hex

    async def _generate(self, operation: str, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = RequestContext(request_id=self._request_id(scope), operation=operation, scope=scope)
        try:
            ctx.raw_body = await read_body(scope, receive, self.config.router.max_body_bytes)
            for step in self.generation_steps:
                await step(ctx)
            await self.dispatcher.forward(ctx, send)
        except APIError as exc:
            ctx.status, ctx.error_code = exc.status, exc.code
            if ctx.first_byte_at is None:
                if self._seal is not None and exc.code != "audit_unavailable":
                    try:
                        await self._seal(ctx)  # refusals are on the audit trail too
                    except APIError as audit_exc:
                        exc = audit_exc
                await _send_error_quietly(send, exc)
        except ClientDisconnected:
            ctx.status, ctx.error_code = 499, "client_disconnected"
        except asyncio.CancelledError:
            ctx.status, ctx.error_code = 499, "client_disconnected"
            raise
        except (OSError, RuntimeError) as exc:
            # The client vanished mid-stream (send failed) or the replica broke the stream.
            ctx.status = ctx.status or 502
            ctx.error_code = type(exc).__name__
        except Exception as exc:
            logger.exception("unexpected error in request %s", ctx.request_id)
            ctx.status, ctx.error_code = 500, "internal_error"
            if ctx.first_byte_at is None:
                await _send_error_quietly(
                    send,
                    APIError(500, f"Internal error ({type(exc).__name__}); request id {ctx.request_id}.",
                             code="internal_error"),
                )
        finally:
            for finish in self.finishers:
                await finish(ctx)

    async def _rate(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = RequestContext(request_id=self._request_id(scope), operation="feedback", scope=scope)
        try:
            ctx.raw_body = await read_body(scope, receive, self.config.router.max_body_bytes)
            await self._authenticate(ctx)
            await send_json(send, 201, await self._feedback(ctx))
        except APIError as exc:
            await _send_error_quietly(send, exc)
        except ClientDisconnected:
            pass

    async def _models(self, scope: Scope, send: Send) -> None:
        ctx = RequestContext(request_id=self._request_id(scope), operation="models", scope=scope)
        try:
            await self._authenticate(ctx)
        except APIError as exc:
            await send_error(send, exc)
            return
        if scope["method"] != "GET":
            await send_error(send, _method_not_allowed(scope["path"], "GET"))
            return
        cards = {m.id: self._card(m) for m in self.config.models}
        wanted = scope["path"][len("/v1/models/"):] if scope["path"].startswith("/v1/models/") else None
        if wanted is None:
            await send_json(send, 200, {"object": "list", "data": list(cards.values())})
        elif wanted in cards:
            await send_json(send, 200, cards[wanted])
        else:
            await send_error(
                send,
                APIError(404, f"The model '{wanted}' does not exist.", code="model_not_found", param="model"),
            )

    def _card(self, model) -> dict:
        aliases = sorted(a for a, targets in self.config.aliases.items() if model.id in targets)
        return {
            "id": model.id,
            "object": "model",
            "created": self._created,
            "owned_by": model.owned_by,
            "max_model_len": model.max_model_len,
            "family": model.family,
            "revision": model.revision,
            "aliases": aliases,
            "max_confidentiality": model.max_confidentiality,
            "ready_replicas": self.table.replica_count(model.id),
        }

    async def _readyz(self, send: Send) -> None:
        replicas = {m.id: self.table.replica_count(m.id) for m in self.config.models}
        stale_s = time.monotonic() - self.table.refreshed_at
        fresh = stale_s < max(10.0, 5 * self.config.router.registry_refresh_s)
        ready = fresh and all(n > 0 for n in replicas.values())
        quota = getattr(self, "quota", None)
        await send_json(
            send,
            200 if ready else 503,
            {
                "status": "ready" if ready else "not_ready",
                "models": {k: {"ready_replicas": v} for k, v in replicas.items()},
                "registry_age_s": round(stale_s, 2),
                # informational: budgeted tenants get 503 while the store is down, others are served
                "quota_store": None if quota is None else ("up" if quota.store_up else "down"),
            },
        )


def _method_not_allowed(path: str, allowed: str) -> APIError:
    return APIError(405, f"{path} accepts {allowed} only.", code="method_not_allowed",
                    headers={"Allow": allowed})


async def _send_error_quietly(send: Send, exc: APIError) -> None:
    try:
        await send_error(send, exc)
    except Exception:  # the client is gone; nothing to tell
        pass


async def _nothing(ctx: RequestContext) -> None:
    return None
