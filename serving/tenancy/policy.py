"""Confidentiality-aware routing: level-2 data (機密性2情報) only reaches approved models.

A request declares its level with `x-confidentiality: 1|2`; without the
header the tenant's default applies. The level may not exceed what the tenant
is cleared for, and the request may only go to models the tenant may use
whose `max_confidentiality` is at least the request's level. Aliases resolve
among those models only, so an alias never falls back to an unapproved model.
"""

from __future__ import annotations

from serving.request import APIError, RequestContext, header

LEVEL_HEADER = b"x-confidentiality"


def _level(ctx: RequestContext) -> int:
    raw = header(ctx.scope, LEVEL_HEADER)
    if raw is None:
        return ctx.tenant.default_confidentiality
    if raw.strip() not in (b"1", b"2"):
        raise APIError(
            400,
            "x-confidentiality must be 1 (機密性1) or 2 (機密性2).",
            code="invalid_confidentiality",
            param="x-confidentiality",
        )
    return int(raw)


class ConfidentialityPolicy:
    async def __call__(self, ctx: RequestContext) -> None:
        tenant = ctx.tenant
        level = _level(ctx)
        ctx.confidentiality = level
        if level > tenant.max_confidentiality:
            raise APIError(
                403,
                f"Tenant '{tenant.id}' may send data up to confidentiality level "
                f"{tenant.max_confidentiality}; this request declares level {level}.",
                code="confidentiality_not_permitted",
                param="x-confidentiality",
            )
        permitted = [m for m in ctx.candidates if tenant.may_use(m.id)]
        if not permitted:
            names = ", ".join(m.id for m in ctx.candidates)
            raise APIError(
                403,
                f"Tenant '{tenant.id}' is not allowed to use {names}.",
                code="model_not_permitted",
                param="model",
            )
        cleared = [m for m in permitted if m.max_confidentiality >= level]
        if not cleared:
            names = ", ".join(m.id for m in permitted)
            raise APIError(
                403,
                f"Confidentiality level {level} data may not be sent to {names} "
                f"(approved up to level {max(m.max_confidentiality for m in permitted)}). "
                "Choose a model approved for this level or lower the level if the data allows.",
                code="model_not_approved_for_confidentiality",
                param="model",
            )
        ctx.candidates = tuple(cleared)
