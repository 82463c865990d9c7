"""Quotas against a real Redis: exact limits, hard budget cap, shared by replicas, fail closed."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.config import ModelRoute, ServingConfig, StoreSettings, TenantLimits, TenantSettings
from serving.router.errors import APIError
from serving.router.pipeline import RequestContext
from serving.tenancy.quota import QuotaLedger, month_of, reservation_for, seconds_to_next_month
from serving.tenancy.reports import usage
from serving.tenancy.store import StoreKeys, async_client, sync_client
from tests.servers import paused, start_redis

MODEL = ModelRoute(id="m", max_model_len=1000)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def config(url: str, **limits) -> ServingConfig:
    tenant = TenantSettings(id="city", name="市", kind="municipality", limits=TenantLimits(**limits))
    return ServingConfig(models=(MODEL,), tenants=(tenant,), store=StoreSettings(url=url, namespace=f"t{time.time_ns()}"))


def ctx(cfg: ServingConfig, i: int, *, max_tokens: int = 10, body: bytes = b"x" * 40) -> RequestContext:
    c = RequestContext(request_id=f"r{i}", operation="chat", scope={"headers": []}, raw_body=body)
    c.tenant, c.candidates, c.model = cfg.tenants[0], (MODEL,), MODEL
    c.payload = {"model": "m", "max_tokens": max_tokens}
    c.confidentiality = 1
    return c


async def ledgers(cfg: ServingConfig, n: int = 1):
    keys = StoreKeys(cfg.store.namespace)
    return [QuotaLedger(cfg, async_client(cfg.store), keys) for _ in range(n)]


async def admitted(ledger: QuotaLedger, c: RequestContext) -> APIError | None:
    try:
        await ledger(c)
    except APIError as exc:
        return exc
    return None


def test_requests_per_minute_exact_across_two_replicas(redis_server):
    async def go():
        cfg = config(redis_server.url, requests_per_minute=7)
        a, b = await ledgers(cfg, 2)
        results = await asyncio.gather(*(admitted(a if i % 2 else b, ctx(cfg, i)) for i in range(12)))
        return results

    if int(time.time()) % 60 > 55:  # do not straddle a minute boundary
        time.sleep(6)
    results = asyncio.run(go())
    refused = [r for r in results if r is not None]
    assert len(refused) == 5
    exc = refused[0]
    assert exc.status == 429 and exc.code == "requests_per_minute_exceeded"
    assert "requests_per_minute" in exc.message and "7" in exc.message
    assert 1 <= int(exc.headers["Retry-After"]) <= 60


def test_monthly_budget_is_a_hard_cap_with_concurrent_reservations(redis_server):
    async def go():
        cfg = config(redis_server.url, monthly_token_budget=500)
        a, b = await ledgers(cfg, 2)
        # each request reserves len(body) + max_tokens = 40 + 60 = 100 tokens
        contexts = [ctx(cfg, i, max_tokens=60) for i in range(8)]
        results = await asyncio.gather(*(admitted(a if i % 2 else b, c) for i, c in enumerate(contexts)))
        ok = [c for c, r in zip(contexts, results, strict=True) if r is None]
        refused = [r for r in results if r is not None]
        # settle: each used 30 tokens, far below its reservation; the freed budget admits more
        for c in ok:
            c.usage = {"prompt_tokens": 20, "completion_tokens": 10}
            await a.settle(c)
        later = await admitted(a, ctx(cfg, 100, max_tokens=60))
        report = usage(sync_client(cfg.store), StoreKeys(cfg.store.namespace), "city", month_of(time.time()))
        return ok, refused, later, report

    ok, refused, later, report = asyncio.run(go())
    assert len(ok) == 5 and len(refused) == 3  # 5 x 100 reserved = 500: the cap, never more
    assert refused[0].code == "monthly_token_budget_exceeded" and refused[0].type == "insufficient_quota"
    assert int(refused[0].headers["Retry-After"]) == pytest.approx(seconds_to_next_month(time.time()), abs=5)
    assert later is None
    assert report["total_tokens"] == 150 and report["models"]["m"] == {
        "requests": 5, "prompt_tokens": 100, "completion_tokens": 50}


def test_budget_refuses_once_settled_usage_reaches_the_cap(redis_server):
    async def go():
        cfg = config(redis_server.url, monthly_token_budget=100)
        (ledger,) = await ledgers(cfg)
        first = ctx(cfg, 1, max_tokens=10)
        assert await admitted(ledger, first) is None
        first.usage = {"prompt_tokens": 60, "completion_tokens": 40}
        await ledger.settle(first)
        return await admitted(ledger, ctx(cfg, 2, max_tokens=1, body=b"x"))

    exc = asyncio.run(go())
    assert exc is not None and exc.status == 429 and "100" in exc.message


def test_tokens_per_minute_counts_settled_tokens(redis_server):
    async def go():
        cfg = config(redis_server.url, tokens_per_minute=50)
        (ledger,) = await ledgers(cfg)
        first = ctx(cfg, 1)
        assert await admitted(ledger, first) is None
        first.usage = {"prompt_tokens": 30, "completion_tokens": 25}
        await ledger.settle(first)
        return await admitted(ledger, ctx(cfg, 2))

    if int(time.time()) % 60 > 55:
        time.sleep(6)
    exc = asyncio.run(go())
    assert exc is not None and exc.code == "tokens_per_minute_exceeded"


def test_store_down_fails_closed_for_budgeted_tenants_only(redis_server):
    async def go():
        budgeted = config(redis_server.url, monthly_token_budget=10_000)
        unlimited = config(redis_server.url)
        (b,) = await ledgers(budgeted)
        (u,) = await ledgers(unlimited)
        with paused(redis_server.proc.pid):
            refused = await admitted(b, ctx(budgeted, 1))
            served = await admitted(u, ctx(unlimited, 2))
            c = ctx(budgeted, 3)
            c.usage = {"prompt_tokens": 5, "completion_tokens": 5}
            await b.settle(c)  # deferred, not lost
            down = b.store_up
            deferred = b.deferred
        task = asyncio.create_task(b.retry_deferred())
        for _ in range(50):
            if b.deferred == 0:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        report = usage(sync_client(budgeted.store), StoreKeys(budgeted.store.namespace), "city", month_of(time.time()))
        return refused, served, down, deferred, b.deferred, b.store_up, report

    refused, served, down, deferred, after, up, report = asyncio.run(go())
    assert refused is not None and refused.status == 503 and refused.code == "quota_store_unavailable"
    assert served is None
    assert down is False and deferred == 1
    assert after == 0 and up is True and report["total_tokens"] == 10


def test_ledger_survives_a_store_crash(redis_server):
    """Append-only file, fsync every second: a killed Redis comes back with the counts."""
    cfg = config(redis_server.url, monthly_token_budget=10_000)

    async def spend():
        (ledger,) = await ledgers(cfg)
        c = ctx(cfg, 1)
        await ledger(c)
        c.usage = {"prompt_tokens": 11, "completion_tokens": 22}
        await ledger.settle(c)

    asyncio.run(spend())
    time.sleep(1.5)
    redis_server.restart(kill=True)
    report = usage(sync_client(cfg.store), StoreKeys(cfg.store.namespace), "city", month_of(time.time()))
    assert report["total_tokens"] == 33


def test_reservation_bounds():
    cfg = config("redis://unused")
    c = ctx(cfg, 1, max_tokens=50, body=b"y" * 30)
    assert reservation_for(c) == 80
    c.payload = {"model": "m"}  # no max_tokens: a choice can use the whole context
    assert reservation_for(c) == 1000
    c.payload = {"model": "m", "max_tokens": 5000, "n": 3}
    assert reservation_for(c) == 3000


def test_month_boundaries_are_tokyo_time():
    # 2026-11-30 15:30 UTC is 2026-12-01 00:30 in Tokyo
    ts = 1796052600.0
    assert month_of(ts) == "2026-12"
    assert month_of(ts - 3600) == "2026-11"
