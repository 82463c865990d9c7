"""Quotas against a real Redis and a real Redis Cluster: exact limits, hard budget cap, shared by
replicas, released on every path, billed once, fail closed."""

from __future__ import annotations

import asyncio
import time
import uuid

from serving.config import ModelRoute, ServingConfig, TenantLimits, TenantSettings
from serving.request import APIError, RequestContext
from serving.store import StoreKeyspace, async_client, sync_client
from serving.tenancy.quota import QuotaLedger, month_of, reservation_for, seconds_to_next_month
from serving.tenancy.reports import usage
from tests.servers import paused

MODEL = ModelRoute(id="m", max_model_len=1000)


class Clock:
    """Wall time the test moves by hand; starts one second into the current minute."""

    def __init__(self) -> None:
        self.now = (time.time() // 60) * 60 + 1

    def __call__(self) -> float:
        return self.now


def config(server, *, timeout_s: float = 2.0, **limits) -> ServingConfig:
    """A tenant with `limits`; the store timeout is generous except where a test measures it
    (on a loaded 2-core host a cluster client's first burst can take more than 0.5 s)."""
    tenant = TenantSettings(id="city", name="市", kind="municipality", limits=TenantLimits(**limits))
    return ServingConfig(models=(MODEL,), tenants=(tenant,),
                         store=server.settings(f"t{time.time_ns()}", timeout_s=timeout_s))


def ctx(cfg: ServingConfig, *, max_tokens: int = 10, body: bytes = b"x" * 40) -> RequestContext:
    c = RequestContext(request_id=uuid.uuid4().hex, operation="chat", scope={"headers": []}, raw_body=body)
    c.tenant, c.candidates, c.model = cfg.tenants[0], (MODEL,), None
    c.payload = {"model": "m", "max_tokens": max_tokens}
    c.confidentiality = 1
    return c


def answered(c: RequestContext, prompt: int, completion: int) -> RequestContext:
    """What dispatch leaves behind when the model answered with these token counts."""
    c.model, c.usage = MODEL, {"prompt_tokens": prompt, "completion_tokens": completion}
    return c


def ledgers(cfg: ServingConfig, clock: Clock, n: int = 1) -> list[QuotaLedger]:
    keys = StoreKeyspace(cfg.store.namespace)
    return [QuotaLedger(cfg, async_client(cfg.store), keys, clock=clock) for _ in range(n)]


async def admitted(ledger: QuotaLedger, c: RequestContext) -> APIError | None:
    try:
        await ledger(c)
    except APIError as exc:
        return exc
    return None


def report(cfg: ServingConfig, clock: Clock) -> dict:
    return usage(sync_client(cfg.store), StoreKeyspace(cfg.store.namespace), "city", month_of(clock()))


def test_requests_per_minute_exact_across_two_replicas(store_server):
    # a generous store timeout: this test is about counting, not about a slow store (a 2 s
    # timeout on a loaded CI host refused two of the burst with 503; see the next test)
    cfg, clock = config(store_server, timeout_s=10.0, requests_per_minute=7), Clock()

    async def go():
        a, b = ledgers(cfg, clock, 2)
        first = await asyncio.gather(*(admitted(a if i % 2 else b, ctx(cfg)) for i in range(12)))
        clock.now += 60  # the next minute has its own window
        later = await admitted(a, ctx(cfg))
        return first, later

    results, later = asyncio.run(go())
    refused = [r for r in results if r is not None]
    assert len(refused) == 5, [(r.status, r.code) for r in refused]
    exc = refused[0]
    assert exc.status == 429 and exc.code == "requests_per_minute_exceeded"
    assert "requests_per_minute" in exc.message and "7" in exc.message
    assert exc.headers["Retry-After"] == "59"  # one second into the minute
    assert later is None


def test_monthly_budget_is_a_hard_cap_with_concurrent_reservations(store_server):
    cfg, clock = config(store_server, monthly_token_budget=500), Clock()

    async def go():
        a, b = ledgers(cfg, clock, 2)
        # each request reserves len(body) + max_tokens = 40 + 60 = 100 tokens
        contexts = [ctx(cfg, max_tokens=60) for _ in range(8)]
        results = await asyncio.gather(*(admitted(a if i % 2 else b, c) for i, c in enumerate(contexts)))
        ok = [c for c, r in zip(contexts, results, strict=True) if r is None]
        refused = [r for r in results if r is not None]
        held = [(c.reservation, c.reserved_tokens) for c in ok]
        # settle: each used 30 tokens, far below its reservation; the freed budget admits more
        for c in ok:
            await a.settle(answered(c, 20, 10))
        later = await admitted(a, ctx(cfg, max_tokens=60))
        return ok, held, refused, later

    ok, held, refused, later = asyncio.run(go())
    assert len(ok) == 5 and len(refused) == 3  # 5 x 100 reserved = 500: the cap, never more
    # reservations are keyed by the server-assigned request id
    assert held == [(f"{c.request_id}|100", 100) for c in ok]
    assert all(c.reservation is None for c in ok)  # released
    assert refused[0].code == "monthly_token_budget_exceeded" and refused[0].type == "insufficient_quota"
    assert int(refused[0].headers["Retry-After"]) == seconds_to_next_month(clock())
    assert later is None
    r = report(cfg, clock)
    assert r["total_tokens"] == 150 and r["models"]["m"] == {
        "requests": 5, "prompt_tokens": 100, "completion_tokens": 50}


def test_budget_refuses_once_settled_usage_reaches_the_cap(store_server):
    cfg, clock = config(store_server, monthly_token_budget=100), Clock()

    async def go():
        (ledger,) = ledgers(cfg, clock)
        first = ctx(cfg, max_tokens=10)
        assert await admitted(ledger, first) is None
        await ledger.settle(answered(first, 60, 40))
        return await admitted(ledger, ctx(cfg, max_tokens=1, body=b"x"))

    exc = asyncio.run(go())
    assert exc is not None and exc.status == 429 and "100" in exc.message


def test_tokens_per_minute_counts_settled_tokens_per_window(store_server):
    cfg, clock = config(store_server, tokens_per_minute=50), Clock()

    async def go():
        (ledger,) = ledgers(cfg, clock)
        first = ctx(cfg)
        assert await admitted(ledger, first) is None
        await ledger.settle(answered(first, 30, 25))
        refused = await admitted(ledger, ctx(cfg))
        clock.now += 60
        return refused, await admitted(ledger, ctx(cfg))

    refused, next_minute = asyncio.run(go())
    assert refused is not None and refused.code == "tokens_per_minute_exceeded"
    assert next_minute is None


def test_unanswered_requests_release_their_reservation_and_count_nothing(store_server):
    """No model chosen (no replica, queue timeout, cancellation, shed): only the release."""
    cfg, clock = config(store_server, monthly_token_budget=100), Clock()

    async def go():
        (ledger,) = ledgers(cfg, clock)
        first = ctx(cfg, max_tokens=60)  # reserves 100: the whole budget
        assert await admitted(ledger, first) is None
        blocked = await admitted(ledger, ctx(cfg, max_tokens=60))
        await ledger.settle(first)  # ctx.model is None: dispatch failed before a model was chosen
        again = ctx(cfg, max_tokens=60)
        return blocked, await admitted(ledger, again), first

    blocked, again, first = asyncio.run(go())
    assert blocked is not None and blocked.code == "monthly_token_budget_exceeded"
    assert again is None and first.reservation is None
    r = report(cfg, clock)
    assert r["requests"] == 0 and r["total_tokens"] == 0


def test_settlement_bills_once_even_when_called_twice(store_server):
    cfg, clock = config(store_server, monthly_token_budget=10_000), Clock()

    async def go():
        a, b = ledgers(cfg, clock, 2)
        c = ctx(cfg)
        await a(c)
        answered(c, 7, 3)
        await a.settle(c)
        await a.settle(c)
        await b.settle(c)  # even another replica replaying it

    asyncio.run(go())
    r = report(cfg, clock)
    assert r["requests"] == 1 and r["total_tokens"] == 10


def test_abandoned_reservations_expire(store_server):
    """A router that died mid-request holds its reservation only until the timeouts have passed."""
    cfg, clock = config(store_server, monthly_token_budget=100), Clock()
    ttl = cfg.router.request_timeout_s + cfg.router.max_queue_wait_s + 60

    async def go():
        (ledger,) = ledgers(cfg, clock)
        assert await admitted(ledger, ctx(cfg, max_tokens=60)) is None  # never settled
        clock.now += ttl - 5
        still = await admitted(ledger, ctx(cfg, max_tokens=60))
        clock.now += 10
        return still, await admitted(ledger, ctx(cfg, max_tokens=60))

    still, after = asyncio.run(go())
    assert still is not None and still.code == "monthly_token_budget_exceeded"
    assert after is None


def test_store_down_fails_closed_and_replays_settlements_once(store_server):
    """A settlement that timed out may still have run: the replay must not count it again."""
    budgeted = config(store_server, timeout_s=0.5, monthly_token_budget=10_000)
    unlimited = config(store_server, timeout_s=0.5)
    clock = Clock()

    async def go():
        (b,) = ledgers(budgeted, clock)
        (u,) = ledgers(unlimited, clock)
        admitted_before = ctx(budgeted)
        await b(admitted_before)
        with paused(*store_server.pids):
            started = time.monotonic()
            refused = await admitted(b, ctx(budgeted))
            took = time.monotonic() - started
            served = await admitted(u, ctx(unlimited))
            await b.settle(answered(admitted_before, 5, 5))  # deferred, not lost
            down, deferred = b.store_up, b.deferred
        for _ in range(50):
            await b.replay()
            if b.deferred == 0:
                break
            await asyncio.sleep(0.1)
        return refused, took, served, down, deferred, b.deferred, b.store_up

    refused, took, served, down, deferred, after, up = asyncio.run(go())
    assert refused is not None and refused.status == 503 and refused.code == "quota_store_unavailable"
    assert took < 1.0  # bounded by store.timeout_s, whatever the client retries inside
    assert served is None
    assert down is False and deferred == 1
    assert after == 0 and up is True
    r = report(budgeted, clock)
    assert r["requests"] == 1 and r["total_tokens"] == 10


def test_admission_counts_a_request_once_whatever_happened_to_its_answer(store_server):
    """A client that retries an admission whose first call ran (redis-py retries on timeouts)
    counts the request once; a request refused because admission's answer was lost (the store
    stopped mid-call) is uncounted by its settlement once the store answers again, whichever of
    the two runs first."""
    cfg, clock = config(store_server, timeout_s=0.5, requests_per_minute=3), Clock()

    async def go():
        (ledger,) = ledgers(cfg, clock)
        twice = ctx(cfg)
        first, again = await admitted(ledger, twice), await admitted(ledger, twice)
        lost = ctx(cfg)
        with paused(*store_server.pids):
            refused = await admitted(ledger, lost)
        # the stopped store still holds the call: it runs (and counts) when the store resumes
        for _ in range(50):
            counted = await ledger._r.get(ledger._keys("city", clock())[0])
            if counted == b"2":
                break
            await asyncio.sleep(0.1)
        await ledger.settle(lost)  # every request is settled; this one takes its count back
        for _ in range(50):
            await ledger.replay()
            if ledger.deferred == 0:
                break
            await asyncio.sleep(0.1)
        # the other order: the settlement's take-back runs before the admission that was still
        # on its way; the admission then finds the voided mark and counts nothing
        early = ctx(cfg)
        keys = ledger._keys("city", clock())
        early.uncounted = (keys[0], keys[4])
        await ledger.settle(early)
        assert await admitted(ledger, early) is None
        rest = [await admitted(ledger, ctx(cfg)) for _ in range(3)]
        return first, again, refused, counted, rest

    first, again, refused, counted, rest = asyncio.run(go())
    assert first is None and again is None
    assert counted == b"2"  # the lost call did count (the case under test happened)
    assert refused is not None and refused.code == "quota_store_unavailable"
    # 3 a minute: `twice` holds one, `lost` and `early` none, so two more are admitted and the
    # third refused
    assert [r is None for r in rest] == [True, True, False], [r and r.code for r in rest]
    assert rest[2].code == "requests_per_minute_exceeded"


def test_ledger_survives_a_store_crash(store_server):
    """Append-only file, fsync every second: a killed Redis comes back with the counts."""
    cfg, clock = config(store_server, monthly_token_budget=10_000), Clock()

    async def spend():
        (ledger,) = ledgers(cfg, clock)
        c = ctx(cfg)
        await ledger(c)
        await ledger.settle(answered(c, 11, 22))

    asyncio.run(spend())
    time.sleep(1.5)
    store_server.restart(kill=True)
    assert report(cfg, clock)["total_tokens"] == 33


def test_reservation_covers_chat_as_one_conversation():
    c = RequestContext(request_id="r", operation="chat", scope={"headers": []}, raw_body=b"y" * 30)
    c.candidates = (MODEL,)
    c.payload = {"model": "m", "max_tokens": 50}
    assert reservation_for(c) == 80
    c.payload = {"model": "m"}  # no max_tokens: a choice can use the whole context
    assert reservation_for(c) == 1000
    c.payload = {"model": "m", "max_tokens": 5000, "n": 3}
    assert reservation_for(c) == 3000
    c.payload = {"model": "m", "max_tokens": 10, "max_completion_tokens": 40}
    assert reservation_for(c) == 70  # the larger of the two limits
    c.payload = {"model": "m", "max_tokens": "20", "n": 2, "best_of": 4.0}  # lax numbers count
    assert reservation_for(c) == 4 * 50
    c.payload = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "何"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}
    assert reservation_for(c) == 1000  # an image expands beyond its bytes: the context bounds it


def test_reservation_covers_every_prompt_of_a_completions_batch():
    c = RequestContext(request_id="r", operation="completions", scope={"headers": []}, raw_body=b"{}" * 100)
    c.candidates = (MODEL,)
    special = 4  # BOS, EOS, a prefix-space piece: tokens a text prompt may gain beyond its bytes
    c.payload = {"model": "m", "prompt": "日本", "max_tokens": 10}
    assert reservation_for(c) == 6 + special + 10
    c.payload = {"model": "m", "prompt": ["ab", "日本", "x" * 5000], "max_tokens": 10}
    assert reservation_for(c) == (2 + special + 10) + (6 + special + 10) + 1000
    c.payload = {"model": "m", "prompt": [1, 2, 3], "max_tokens": 10}
    assert reservation_for(c) == 13
    c.payload = {"model": "m", "prompt": [[1, 2, 3], [4] * 50], "max_tokens": 10, "n": 2, "best_of": 3}
    assert reservation_for(c) == 3 * (13 + 60)
    c.payload = {"model": "m", "prompt": ["a", [1]], "max_tokens": 10}  # refused by the engine anyway
    assert reservation_for(c) == min(1000, 200 + special + 10)
    c.payload = {"model": "m", "prompt": "a", "max_completion_tokens": 1}  # not a completions field
    assert reservation_for(c) == 1000
    c.candidates = (MODEL, ModelRoute(id="big", max_model_len=4000))  # an alias: the largest context
    c.payload = {"model": "m", "prompt": ["x" * 5000, "y"]}
    assert reservation_for(c) == 4000 + 4000


def test_month_boundaries_are_tokyo_time():
    # 2026-11-30 15:30 UTC is 2026-12-01 00:30 in Tokyo
    ts = 1796052600.0
    assert month_of(ts) == "2026-12"
    assert month_of(ts - 3600) == "2026-11"
