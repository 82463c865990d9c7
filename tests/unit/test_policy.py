"""Confidentiality routing: level-2 data only to approved models; aliases filter."""

from __future__ import annotations

import asyncio

import pytest

from serving.config import ModelRoute, TenantSettings
from serving.request import APIError, RequestContext
from serving.tenancy.policy import ConfidentialityPolicy

INSIDE = ModelRoute(id="inside", max_model_len=100, max_confidentiality=2)
OUTSIDE = ModelRoute(id="outside", max_model_len=100, max_confidentiality=1)
AGENCY = TenantSettings(id="agency", name="省", kind="agency", max_confidentiality=2)
CITY = TenantSettings(id="city", name="市", kind="municipality", max_confidentiality=1,
                      allowed_models=("outside",))


def run(tenant, candidates, level: bytes | None):
    headers = [] if level is None else [(b"x-confidentiality", level)]
    ctx = RequestContext(request_id="r", operation="chat", scope={"headers": headers})
    ctx.tenant, ctx.candidates = tenant, tuple(candidates)
    asyncio.run(ConfidentialityPolicy()(ctx))
    return ctx


def test_level_two_alias_resolves_only_to_approved_models():
    ctx = run(AGENCY, [OUTSIDE, INSIDE], b"2")
    assert [m.id for m in ctx.candidates] == ["inside"] and ctx.confidentiality == 2


def test_default_level_comes_from_the_tenant():
    ctx = run(AGENCY, [OUTSIDE, INSIDE], None)
    assert ctx.confidentiality == 1 and [m.id for m in ctx.candidates] == ["outside", "inside"]


@pytest.mark.parametrize(
    "tenant, candidates, level, code",
    [
        (AGENCY, [OUTSIDE], b"2", "model_not_approved_for_confidentiality"),
        (CITY, [OUTSIDE], b"2", "confidentiality_not_permitted"),
        (CITY, [INSIDE], b"1", "model_not_permitted"),
        (AGENCY, [INSIDE], b"3", "invalid_confidentiality"),
        (AGENCY, [INSIDE], b"high", "invalid_confidentiality"),
    ],
)
def test_refusals(tenant, candidates, level, code):
    with pytest.raises(APIError) as exc:
        run(tenant, candidates, level)
    assert exc.value.code == code
    assert exc.value.status == (400 if code == "invalid_confidentiality" else 403)
