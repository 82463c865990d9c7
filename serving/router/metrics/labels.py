"""Label values of govllm's metrics, from closed sets only.

Every distinct label value is a time series in Prometheus, kept for weeks; a
value a client can choose (a model name it made up, a tenant claimed in a
token, an error code a vendor invented) would let anyone grow the server's
memory. So each label takes its value from a set the spec declares (tenants,
models) or the code defines (operations, error codes), and anything else is
one collapsed value. Users, keys, request ids and text are never labels.
"""

from __future__ import annotations

from typing import Any

#: No valid credential: the request was refused before a tenant was known.
UNAUTHENTICATED = "unauthenticated"
#: A valid credential of a tenant the spec does not declare (refused 403).
UNKNOWN_TENANT = "unknown"
#: Refused before a model was resolved (bad body, unknown model name).
NO_MODEL = "none"
#: An error code outside govllm's vocabulary (a vendor's own, say).
OTHER = "other"
#: The code label of a request that succeeded.
NO_ERROR = ""

#: Every error code govllm answers with (docs/api.md), and the few it records without
#: answering (client_disconnected, client_read_timeout). tests/unit/test_metrics_labels.py
#: checks that every code literal in serving/ is here, so a new code cannot silently collapse
#: into OTHER.
ERROR_CODES = frozenset({
    "audit_unavailable", "client_disconnected", "client_read_timeout", "confidentiality_not_permitted",
    "context_length_exceeded", "data_plane_credential_required", "duplicate_header",
    "duplicate_key", "engine_failed", "engine_stalled", "feedback_already_given",
    "feedback_store_unavailable", "internal_error", "invalid_api_key", "invalid_confidentiality",
    "invalid_content_length", "invalid_json", "invalid_priority", "invalid_request_body", "invalid_token",
    "invalid_usage_type", "invalid_value", "key_store_unavailable", "method_not_allowed",
    "missing_api_key", "missing_required_parameter", "model_not_approved_for_confidentiality",
    "model_not_found", "model_not_permitted", "model_not_supported", "model_overloaded",
    "model_starting", "model_unavailable", "monthly_token_budget_exceeded", "pii_refused",
    "quota_store_unavailable",
    "request_not_found", "request_timeout", "request_too_large", "requests_per_minute_exceeded",
    "tenant_not_configured", "tenant_share_exceeded", "tokens_per_minute_exceeded",
    "unknown_route", "unsupported_media_type", "upstream_error", "upstream_timeout",
    "vendor_auth_failed", "vendor_limits_unavailable", "vendor_rate_limited",
})


def tenant_label(ctx: Any) -> str:
    """The request's tenant as declared in the spec, or one of two collapsed values."""
    if ctx.tenant is not None:
        return ctx.tenant.id
    return UNKNOWN_TENANT if ctx.principal is not None else UNAUTHENTICATED


def model_label(ctx: Any) -> str:
    """The declared model that answered or was chosen; never the name the client sent.

    An alias counts for its first model until one is dispatched to; a request refused
    before its model was resolved counts as NO_MODEL.
    """
    if ctx.model is not None:
        return ctx.model.id
    if ctx.candidates:
        return ctx.candidates[0].id
    return NO_MODEL


def code_label(code: str | None) -> str:
    if not code:
        return NO_ERROR
    return code if code in ERROR_CODES else OTHER


def status_label(status: int | None) -> str:
    """The HTTP status as sent (a request that never got one, as 0: should not happen)."""
    return str(status) if status and 100 <= status <= 599 else "0"
