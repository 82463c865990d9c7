"""The router's HTTP surface: OpenAI endpoints plus health probes.

Routes:
  GET  /v1/models, /v1/models/{id}   models and their aliases (authenticated)
  POST /v1/chat/completions          chat, streaming or not (authenticated)
  POST /v1/completions               text completion (authenticated)
  POST /v1/responses                 the Responses API, streaming or not; nothing stored (authenticated)
  POST /v1/embeddings                embeddings of an embedding model (authenticated)
  POST /v1/rerank, /v1/score         relevance of documents to a query (embedding or rerank model)
  POST /v1/feedback                  rate an answer of your tenant (authenticated)
  GET  /healthz                      the router process answers
  GET  /openapi.yaml, /openapi.json   the OpenAPI document of govllm's additions (no auth)
  GET  /readyz                       every self-hosted model has a ready replica (vendor
                                     endpoints are listed with their circuit state but do not
                                     gate readiness: a vendor outage must not take the router
                                     out of its Service)
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from typing import Any

from serving.config import ServingConfig
from serving.model_kinds import OPERATION_PATHS
from serving.observability.tracing.names import AUDIT_BEGIN_SPAN, AUDIT_COMMIT_SPAN
from serving.request import APIError, Finisher, RequestContext, Scope, Step, header
from serving.router.admission import Admission
from serving.router.asgi import (
    ClientDisconnected,
    ClientTooSlow,
    Receive,
    Send,
    lifespan,
    read_body,
    send_error,
    send_json,
)
from serving.router.dispatch import Dispatcher
from serving.router.endpoints import EndpointTable
from serving.router.openapi import PATHS as OPENAPI_PATHS
from serving.router.openapi import send_openapi
from serving.router.request_path import RequestPath
from serving.vendor.link import VendorLink

logger = logging.getLogger("govllm.router")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Every model operation takes the same steps (auth, policy, quota, audit); which kind of
#: model serves which is checked when the model is resolved (serving/model_kinds.py).
_GENERATION = {path: operation for operation, path in OPERATION_PATHS.items()}
#: Headers whose meaning would be ambiguous if sent twice (which copy wins differs between hops).
_SINGLE_HEADERS = frozenset({b"authorization", b"content-type", b"content-length", b"x-confidentiality",
                             b"x-govllm-usage-type", b"x-request-id", b"transfer-encoding"})
_JSON_TYPES = frozenset({b"application/json"})


class RouterApp:
    """ASGI callable; one instance per router replica.

    `path` (serving/router/request_path.py) holds the steps (authentication first,
    then parsing, model resolution, confidentiality policy, PII guard, quota
    admission), the feedback endpoint and the audit trail: `audit` (serving/audit/trail.py) makes the begin record durable
    before a prompt is dispatched and the end record before the last bytes of
    the response (refusals get one complete record); `finishers` run after
    every request (settlement, access log) and never delay the response.

    Request ids are always assigned here (`x-govllm-request-id` in every
    response): they key quota reservations, the ledger, the audit trail and
    feedback, so a client cannot make two requests collide. The client's own
    `x-request-id` is kept beside it for correlation.
    """

    def __init__(
        self,
        config: ServingConfig,
        *,
        table: EndpointTable,
        path: RequestPath,
        data_plane_token: str | None = None,
        contracts: dict | None = None,
        tracer=None,
    ):
        self.config = config
        self.table = table
        for model in config.models:
            if model.endpoint is not None:
                table.add_vendor(VendorLink(model.id, model.endpoint))
        audit = path.audit
        self._audit = audit
        table.eject_s = config.router.replica_eject_s
        table.choice = config.router.replica_choice
        table.balance_factor = config.router.prefix_affinity_balance_factor
        self.admission = Admission(config.models, config.router, table, config.tenants)
        token = data_plane_token or os.environ.get(config.router.data_plane_token_env, "")
        begin, end = (audit.begin, audit.end) if audit else (_nothing, _nothing)
        if tracer is not None and audit is not None:  # serving/observability/tracing/spans.py
            begin, end = tracer.hook(AUDIT_BEGIN_SPAN, begin), tracer.hook(AUDIT_COMMIT_SPAN, end)
        self._audit_end = end
        self.dispatcher = Dispatcher(
            table, config.router, self.admission, data_plane_token=token,
            before_dispatch=begin, before_end=end, contracts=contracts, tracer=tracer,
        )
        self._authenticate = path.authenticate
        self._feedback = path.feedback
        self.generation_steps: list[Step] = list(path.steps)
        self._tracer = tracer  # None: tracing off, and nothing below is wrapped
        self._forward = self.dispatcher.forward
        if tracer is not None:
            self.generation_steps = tracer.steps(self.generation_steps)
            self._forward = tracer.dispatch(self.dispatcher.forward)
        self.finishers: list[Finisher] = list(path.finishers)
        self.quota = path.quota  # /readyz reports the shared store's state
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
        elif path in OPENAPI_PATHS and method == "GET":
            await send_openapi(path, send)
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

    @staticmethod
    def _client_request_id(scope: Scope) -> str | None:
        """The client's own x-request-id, kept for correlation; never used as a key."""
        given = header(scope, b"x-request-id")
        if given:
            text = given.decode("latin-1")
            if _SAFE_REQUEST_ID.match(text):
                return text
        return None

    def _context(self, operation: str, scope: Scope) -> RequestContext:
        return RequestContext(request_id=uuid.uuid4().hex, operation=operation, scope=scope,
                              client_request_id=self._client_request_id(scope))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        settings = self.config.router
        try:
            async with asyncio.timeout(settings.request_body_timeout_s):
                return await read_body(scope, receive, settings.max_body_bytes)
        except TimeoutError:
            raise APIError(408, f"The request body did not arrive within "
                           f"{settings.request_body_timeout_s:g} s.", code="request_timeout") from None

    async def _generate(self, operation: str, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self._context(operation, scope)
        if self._tracer is not None:
            self._tracer.begin(ctx)  # the root span; x-govllm-trace-id on every response
        try:
            # authenticate before anything else is read: the record of any later refusal then
            # names its tenant, and nobody without a credential makes the router read a body
            duplicated = _duplicated_headers(scope)
            if b"authorization" in duplicated:
                raise _duplicate_header(b"authorization")
            await self.generation_steps[0](ctx)  # authenticate
            _check_headers(scope, duplicated)
            ctx.raw_body = await self._read_body(scope, receive)
            for step in self.generation_steps[1:]:
                await step(ctx)
            await self._forward(ctx, send)
        except APIError as exc:
            ctx.status, ctx.error_code = exc.status, exc.code
            if ctx.first_byte_at is None:
                if self._audit is not None and exc.code != "audit_unavailable":
                    try:
                        await self._audit_end(ctx)  # refusals are on the audit trail too
                    except APIError as audit_exc:
                        exc = audit_exc
                await _send_error_quietly(send, exc, ctx)
        except ClientDisconnected:
            ctx.status, ctx.error_code = 499, "client_disconnected"
        except ClientTooSlow:  # the stream was cut: the client took nothing for client_send_timeout_s
            ctx.status, ctx.error_code = 408, "client_read_timeout"
        except asyncio.CancelledError:
            ctx.status, ctx.error_code = 499, "client_disconnected"
            raise
        except OSError:  # the client vanished mid-answer: the next send failed
            ctx.status, ctx.error_code = 499, "client_disconnected"
        except Exception as exc:
            logger.exception("unexpected error in request %s", ctx.request_id)
            ctx.status, ctx.error_code = 500, "internal_error"
            if ctx.first_byte_at is None:
                await _send_error_quietly(
                    send,
                    APIError(500, f"Internal error ({type(exc).__name__}); request id {ctx.request_id}.",
                             code="internal_error"),
                    ctx,
                )
        finally:
            if self._audit is not None and not ctx.audit_closed:
                self._audit.end_nowait(ctx)  # the client is gone or the request failed oddly
            for finish in self.finishers:
                await finish(ctx)
            if ctx.trace is not None:
                self._tracer.end(ctx)

    async def _rate(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self._context("feedback", scope)
        try:
            _check_headers(scope, _duplicated_headers(scope))
            ctx.raw_body = await self._read_body(scope, receive)
            await self._authenticate(ctx)
            await send_json(send, 201, await self._feedback(ctx))
        except APIError as exc:
            await _send_error_quietly(send, exc, ctx)
        except ClientDisconnected:
            pass

    async def _models(self, scope: Scope, send: Send) -> None:
        ctx = self._context("models", scope)
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
            "source": model.source,
            "kind": model.kind,
            "capabilities": model.capabilities,
            "tool_call_parser": model.tool_call_parser,
            "reasoning_parser": model.reasoning_parser,
            **self._vendor_card(model),
        }

    def _vendor_card(self, model) -> dict:
        out: dict[str, Any] = {}
        if model.price is not None:
            out["price_yen_per_million"] = {"input": model.price.input_yen_per_million,
                                            "output": model.price.output_yen_per_million}
        if model.endpoint is not None:
            ep = self.table.static[model.id][0]
            out["provider"] = model.endpoint.terms.provider
            out["data_location"] = model.endpoint.terms.data_location
            out["endpoint_state"] = self.table.state(ep)
        return out

    def _vendor_status(self) -> dict:
        """Each vendor endpoint's circuit: state, why it opened, the contract's limits."""
        out = {}
        for model_id, eps in self.table.static.items():
            ep = eps[0]
            settings = ep.vendor.settings
            out[model_id] = {
                "endpoint": ep.url,
                "provider": settings.terms.provider,
                "state": self.table.state(ep),
                "reason": ep.reason or None,
                "in_flight": ep.inflight,
                "limits": settings.limits.model_dump(mode="json"),
            }
        return out

    async def _readyz(self, send: Send) -> None:
        replicas = {m.id: self.table.replica_count(m.id) for m in self.config.models}
        stale_s = time.monotonic() - self.table.refreshed_at
        fresh = stale_s < max(10.0, 5 * self.config.router.registry_refresh_s)
        on_demand = {m.id for m in self.config.models if m.on_demand}  # may be at zero replicas
        ready = fresh and all(n > 0 for m, n in replicas.items()
                              if m not in self.table.static and m not in on_demand)
        quota = self.quota
        await send_json(
            send,
            200 if ready else 503,
            {
                "status": "ready" if ready else "not_ready",
                "models": {k: {"ready_replicas": v} for k, v in replicas.items()},
                "registry_age_s": round(stale_s, 2),
                # router replicas this one shares every model's admission slots with (itself included)
                "routers": self.table.routers,
                "vendor_endpoints": self._vendor_status(),
                # informational: budgeted tenants get 503 while the store is down, others are served
                "quota_store": None if quota is None else ("up" if quota.store_up else "down"),
            },
        )


def _method_not_allowed(path: str, allowed: str) -> APIError:
    return APIError(405, f"{path} accepts {allowed} only.", code="method_not_allowed",
                    headers={"Allow": allowed})


def _duplicated_headers(scope: Scope) -> set[bytes]:
    """Headers of _SINGLE_HEADERS sent more than once (which copy wins differs between hops)."""
    seen: set[bytes] = set()
    twice: set[bytes] = set()
    for name, _ in scope["headers"]:
        if name in _SINGLE_HEADERS:
            (twice if name in seen else seen).add(name)
    return twice


def _duplicate_header(name: bytes) -> APIError:
    return APIError(400, f"The header {name.decode()} was sent more than once; send it once.",
                    code="duplicate_header", param=name.decode())


def _check_headers(scope: Scope, duplicated: set[bytes]) -> None:
    """Refuse ambiguous or mistyped requests before reading the body (400/415)."""
    if duplicated:
        raise _duplicate_header(min(duplicated))
    content_type = header(scope, b"content-type")
    if content_type is not None:
        media = content_type.split(b";", 1)[0].strip().lower()
        if media not in _JSON_TYPES:
            raise APIError(415, "Send the request body as JSON with 'Content-Type: application/json' "
                           f"(got '{media.decode('latin-1')[:64]}').", code="unsupported_media_type")


async def _send_error_quietly(send: Send, exc: APIError, ctx: RequestContext) -> None:
    try:
        await send_error(send, exc, [(b"x-govllm-request-id", ctx.request_id.encode()),
                                     *ctx.response_headers])
    except Exception:  # the client is gone; nothing to tell
        pass


async def _nothing(ctx: RequestContext) -> None:
    return None
