"""The router's request path as a sequence of small steps.

Each step does one job (authenticate, validate, resolve the model, and later
policy and quota) and either enriches the RequestContext or refuses the
request with an APIError. Finishers run after every request, whatever the
outcome, for accounting (access log now; usage ledger and audit record
later). A step can be tested alone and steps can be reordered or added
without touching the others, which is how tenancy, quotas and audit slot in.
"""

from __future__ import annotations

import logging
import time
from typing import Any, get_args

from serving.config import ServingConfig, TenantSettings, UsageType
from serving.logs import fields
from serving.model_kinds import OPERATION_PATHS, kinds_serving, serves
from serving.request import APIError, Principal, RequestContext, header
from serving.router.json_body import parse_object
from serving.router.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RerankRequest,
    ResponsesRequest,
    ScoreRequest,
    validate,
)
from serving.tenancy.keystore import KeysUnconfirmed
from serving.tenancy.oidc import TokenRejected, looks_like_jwt

USAGE_TYPES = get_args(UsageType)

log = logging.getLogger("govllm.access")


#: The principal of every request when authentication is disabled (benchmarks, closed labs).
ANONYMOUS = TenantSettings(id="anonymous", name="anonymous", kind="agency")


class Authenticate:
    """Bearer credential -> Principal (tenant, user) and the tenant's settings.

    API keys (`gvk_...`) are checked against the router's in-memory copy of the
    key records; anything shaped like a JWT is verified as an OIDC token when
    OIDC is configured. Either way the tenant must be declared in the spec.
    """

    def __init__(self, config: ServingConfig, *, keys: Any = None, oidc: Any = None):
        self._enabled = config.auth.enabled
        self._keys = keys
        self._oidc = oidc
        self._tenants = {t.id: t for t in config.tenants}

    async def __call__(self, ctx: RequestContext) -> None:
        if not self._enabled:
            ctx.principal = Principal(tenant=ANONYMOUS.id, user="anonymous", method="none")
            ctx.tenant = self._tenants.get(ANONYMOUS.id, ANONYMOUS)
            return
        raw = header(ctx.scope, b"authorization")
        if raw is None:
            raise APIError(
                401,
                "You didn't provide an API key. Send it in the Authorization header: "
                "'Authorization: Bearer <key>'.",
                code="missing_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scheme, _, token = raw.decode("latin-1").partition(" ")
        token = token.strip()
        principal = None
        if scheme.lower() == "bearer" and token:
            if self._oidc is not None and looks_like_jwt(token):
                try:
                    principal = await self._oidc.verify(token)
                except TokenRejected as exc:
                    raise APIError(
                        401, f"Invalid bearer token: {exc}.", code="invalid_token",
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                    ) from None
            elif self._keys is not None:
                principal = await self._key_principal(token)
        if principal is None:
            raise APIError(
                401,
                "Incorrect API key provided. Check the key, or ask your administrator for a new one.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        tenant = self._tenants.get(principal.tenant)
        if tenant is None:
            raise APIError(
                403,
                f"Tenant '{principal.tenant}' is not configured on this platform.",
                code="tenant_not_configured",
            )
        ctx.principal, ctx.tenant = principal, tenant
        usage_type = header(ctx.scope, b"x-govllm-usage-type")
        if usage_type is not None:
            value = usage_type.decode("latin-1")
            if value not in USAGE_TYPES:
                raise APIError(
                    400, f"x-govllm-usage-type must be one of {', '.join(USAGE_TYPES)}.",
                    code="invalid_usage_type", param="x-govllm-usage-type",
                )
            ctx.usage_type = value


    async def _key_principal(self, token: str) -> Principal | None:
        """The API key's principal; a stale key copy is confirmed with the store first.

        The copy is normally confirmed every second in the background; after a pause (a
        store outage, a stopped process) one round trip here decides whether the key is
        still good, and only when the store cannot answer is the request refused.
        """
        try:
            return self._keys.authenticate(token)
        except KeysUnconfirmed:
            pass
        try:
            await self._keys.confirm()
            return self._keys.authenticate(token)
        except Exception as exc:
            detail = str(exc) if isinstance(exc, KeysUnconfirmed) else "the key store does not answer"
            raise APIError(
                503, f"{detail}; retry shortly.", code="key_store_unavailable",
                headers={"Retry-After": "2"},
            ) from None


_SCHEMAS = {"chat": ChatCompletionRequest, "completions": CompletionRequest, "responses": ResponsesRequest,
            "embeddings": EmbeddingRequest, "score": ScoreRequest, "rerank": RerankRequest}


class ParseRequest:
    """Body -> JSON object -> schema check; records what later steps need."""

    async def __call__(self, ctx: RequestContext) -> None:
        if not ctx.raw_body:
            raise APIError(400, "Request body is empty; send a JSON object.", code="invalid_request_body")
        payload = parse_object(ctx.raw_body)
        request = validate(_SCHEMAS[ctx.operation], payload)
        ctx.payload = payload
        ctx.requested_model = request.model
        ctx.stream = request.stream
        options = request.stream_options
        ctx.client_wants_usage = bool(options and options.include_usage)


class ResolveModel:
    """Model id or alias -> candidate models, in fallback order."""

    def __init__(self, config: ServingConfig):
        self._models = {m.id: m for m in config.models}
        self._aliases = {
            alias: tuple(self._models[t] for t in targets) for alias, targets in config.aliases.items()
        }

    async def __call__(self, ctx: RequestContext) -> None:
        name = ctx.requested_model or ""
        if name in self._models:
            ctx.candidates = (self._models[name],)
        elif name in self._aliases:
            ctx.candidates = self._aliases[name]
        else:
            raise APIError(
                404,
                f"The model '{name}' does not exist. Available models: "
                f"{', '.join(sorted(self._models))}; aliases: {', '.join(sorted(self._aliases)) or 'none'}.",
                code="model_not_found",
                param="model",
            )
        serving = tuple(m for m in ctx.candidates if serves(m.kind, ctx.operation))
        if not serving:
            raise self._wrong_kind(name, ctx)
        ctx.candidates = serving

    def _wrong_kind(self, name: str, ctx: RequestContext) -> APIError:
        """Refuse an operation the model's kind does not serve, naming the models that do."""
        kinds = sorted({m.kind for m in ctx.candidates})
        path = OPERATION_PATHS[ctx.operation]
        able = sorted(m.id for m in self._models.values() if serves(m.kind, ctx.operation))
        wanted = " or ".join(kinds_serving(ctx.operation))
        return APIError(
            400,
            f"The model '{name}' is a {'/'.join(kinds)} model and does not serve {path}; it needs "
            f"a model of kind {wanted}. Models that serve it: {', '.join(able) or 'none on this platform'}.",
            code="model_not_supported",
            param="model",
        )


class AccessLog:
    """One structured line per request: who, what, outcome, timings (serving/logs.py).

    The fields are the record's own (JSON keys with Serve's JSON log encoding), never prompt
    or answer text.
    """

    async def __call__(self, ctx: RequestContext) -> None:
        try:
            now = time.perf_counter()
            model = ctx.model.id if ctx.model else ctx.requested_model
            tenant = ctx.principal.tenant if ctx.principal else None
            # the message repeats the key fields for the TEXT encoding, which shows no extras
            log.info(
                "%s %s %s tenant=%s govllm_request_id=%s", ctx.operation, model, ctx.status,
                tenant, ctx.request_id,
                extra=fields(
                    govllm_request_id=ctx.request_id,
                    client_request_id=ctx.client_request_id,
                    tenant=tenant,
                    user=ctx.principal.user if ctx.principal else None,
                    operation=ctx.operation,
                    model=model,
                    stream=ctx.stream,
                    priority=ctx.priority,
                    status=ctx.status,
                    error_code=ctx.error_code,
                    usage=ctx.usage,
                    ttfb_ms=round(1000 * (ctx.first_byte_at - ctx.started_at), 2)
                    if ctx.first_byte_at else None,
                    duration_ms=round(1000 * (now - ctx.started_at), 2),
                    client=ctx.client,
                ),
            )
        except Exception:  # logging must never fail a request
            pass
