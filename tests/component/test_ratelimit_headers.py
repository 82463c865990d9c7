"""OpenAI-style x-ratelimit-* headers from the quota step, against a real Redis (and Cluster),
and Retry-After on every 429/503 the router's error path sends."""

from __future__ import annotations

import asyncio

from serving.request import APIError
from serving.router.asgi import DEFAULT_RETRY_AFTER_S, send_error
from tests.component.test_quota import Clock, admitted, answered, config, ctx, ledgers


def _h(pairs) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k).lower(): (v.decode() if isinstance(v, bytes) else v)
            for k, v in pairs}


def test_admitted_requests_carry_the_remaining_minute(store_server):
    cfg, clock = config(store_server, requests_per_minute=3, tokens_per_minute=100), Clock()
    clock.now += 19  # 20 s into the minute: both windows reset in 40 s

    async def go():
        (ledger,) = ledgers(cfg, clock)
        seen = []
        for _ in range(3):
            c = ctx(cfg)
            assert await admitted(ledger, c) is None
            seen.append(_h(c.response_headers))
            await ledger.settle(answered(c, 10, 5))
        refused = await admitted(ledger, ctx(cfg))
        return seen, refused

    seen, refused = asyncio.run(go())
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
    assert [h["x-ratelimit-remaining-tokens"] for h in seen] == ["100", "85", "70"]  # settled so far
    assert seen[0]["x-ratelimit-limit-requests"] == "3" and seen[0]["x-ratelimit-limit-tokens"] == "100"
    assert seen[0]["x-ratelimit-reset-requests"] == seen[0]["x-ratelimit-reset-tokens"] == "40s"
    assert refused.status == 429 and refused.code == "requests_per_minute_exceeded"
    headers = _h(refused.headers.items())
    assert headers["retry-after"] == "40" and headers["x-ratelimit-remaining-requests"] == "0"


def test_tenants_without_limits_get_no_headers(store_server):
    cfg, clock = config(store_server, monthly_token_budget=10_000), Clock()

    async def go():
        (ledger,) = ledgers(cfg, clock)
        c = ctx(cfg)
        assert await admitted(ledger, c) is None
        return c.response_headers

    assert asyncio.run(go()) == []  # a budget alone has no OpenAI header


def _sent(exc: APIError) -> tuple[int, dict[str, str]]:
    messages: list[dict] = []

    async def send(message):
        messages.append(message)

    asyncio.run(send_error(send, exc))
    return messages[0]["status"], _h(messages[0]["headers"])


def test_every_429_and_503_carries_retry_after():
    # an origin that named none (an engine's own 503 relayed) gets the default ...
    for status in (429, 503):
        got, headers = _sent(APIError(status, "busy", code="upstream_error"))
        assert got == status and headers["retry-after"] == str(DEFAULT_RETRY_AFTER_S)
    # ... one that named one keeps it, once; other statuses get none
    _, headers = _sent(APIError(503, "x", code="model_unavailable", headers={"Retry-After": "7"}))
    assert headers["retry-after"] == "7"
    assert "retry-after" not in _sent(APIError(400, "bad", code="invalid_value"))[1]
