"""Admission gates: bounded slots and queue per model, fair refusal, spill-over to the alias's next model;
priority classes and weighted fair queuing through the gate and the request-path step."""

from __future__ import annotations

import asyncio

import pytest

from serving.config import ModelRoute, RouterSettings, ServingConfig, TenantSettings
from serving.request import APIError, Principal, RequestContext
from serving.router.admission import Admission
from serving.router.admission.priority import ResolvePriority
from serving.router.endpoints import EndpointTable

A = ModelRoute(id="a", max_model_len=128, max_ongoing_per_replica=2, max_queued_per_replica=2)
B = ModelRoute(id="b", max_model_len=128, max_ongoing_per_replica=1, max_queued_per_replica=0)


def table(replicas: dict[str, int], routers: int = 1) -> EndpointTable:
    t = EndpointTable()
    t.update({m: [{"replica_id": f"{m}{i}", "url": f"http://{m}:{i}"} for i in range(n)]
              for m, n in replicas.items()}, routers=routers)
    return t


def admission(replicas: dict[str, int], routers: int = 1, **settings) -> Admission:
    s = RouterSettings(**{"max_queue_wait_s": 5.0, **settings})
    return Admission([A, B], s, table(replicas, routers))


def test_slots_queue_and_shedding():
    async def go():
        adm = admission({"a": 1})
        first = [await adm.admit([A], "t1", set()) for _ in range(2)]  # 2 slots
        queued = [asyncio.create_task(adm.admit([A], f"t{i}", set())) for i in (2, 3)]  # 2 queued
        await asyncio.sleep(0)
        with pytest.raises(APIError) as shed:
            await adm.admit([A], "t4", set())
        assert shed.value.status == 503 and shed.value.code == "model_overloaded"
        assert 1 <= int(shed.value.headers["Retry-After"]) <= 60
        first[0][1].release()
        model, slot = await asyncio.wait_for(queued[0], 1)  # FIFO: the first waiter got the slot
        assert model.id == "a" and not queued[1].done()
        for _, s in first[1:] + [(model, slot)]:
            s.release()
        await asyncio.wait_for(queued[1], 1)
        gate = adm.gates["a"]
        assert gate.inflight == 1 and not gate.waiters
    asyncio.run(go())


def test_capacity_scales_with_replicas_and_is_shared_by_routers():
    adm = admission({"a": 3}, routers=2)
    adm.resize()
    assert adm.gates["a"].slots == 3 and adm.gates["a"].queue_limit == 3  # ceil(2*3/2)


def test_a_tenant_over_its_share_is_refused_while_others_queue():
    async def go():
        adm = admission({"a": 1}, tenant_max_share=0.5)  # 2 slots + 2 queue -> share 2
        held = [await adm.admit([A], "flood", set()) for _ in range(2)]
        with pytest.raises(APIError) as refused:
            await adm.admit([A], "flood", set())
        assert refused.value.status == 429 and refused.value.code == "tenant_share_exceeded"
        quiet = asyncio.create_task(adm.admit([A], "quiet", set()))
        await asyncio.sleep(0)
        held[0][1].release()
        assert (await asyncio.wait_for(quiet, 1))[0].id == "a"
    asyncio.run(go())


def test_saturated_model_spills_to_the_next_alias_candidate():
    async def go():
        adm = admission({"a": 1, "b": 1})
        [await adm.admit([A, B], "t", set()) for _ in range(2)]
        model, _ = await adm.admit([A, B], "t", set())
        assert model.id == "b"  # a is full, b has a free slot
    asyncio.run(go())


def test_queue_wait_is_bounded_and_cancellation_leaves_no_trace():
    async def go():
        adm = admission({"a": 1}, max_queue_wait_s=0.05)
        [await adm.admit([A], "t", set()) for _ in range(2)]
        with pytest.raises(APIError) as waited:
            await adm.admit([A], "u", set())
        assert waited.value.code == "model_overloaded" and "waited" in waited.value.message
        task = asyncio.create_task(adm.admit([A], "v", set()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate = adm.gates["a"]
        assert not gate.waiters and "u" not in gate.by_tenant and "v" not in gate.by_tenant
    asyncio.run(go())


def test_no_live_replica_is_model_unavailable_with_retry_after():
    async def go():
        adm = admission({"a": 1})
        ep = adm._table.by_model["a"][0]
        adm._table.eject(ep, "test")
        with pytest.raises(APIError) as exc:
            await adm.admit([A], "t", set())
        assert exc.value.status == 503 and exc.value.code == "model_unavailable"
        assert exc.value.headers["Retry-After"] == "5"  # when its ejection time is over
    asyncio.run(go())


# -- priority classes and fair queuing (docs/scheduling.md, fair-admission) -----------------------

STAFF = TenantSettings(id="staff", name="省", kind="agency")
CITY = TenantSettings(id="city", name="市", kind="municipality")
HEAVY = TenantSettings(id="heavy", name="重", kind="municipality", weight=2.0)
NIGHTLY = TenantSettings(id="nightly", name="夜", kind="agency", priority="batch")
TENANTS = (STAFF, CITY, HEAVY, NIGHTLY)
ONE = ModelRoute(id="one", max_model_len=128, max_ongoing_per_replica=1, max_queued_per_replica=4)


def fair(queue: int = 4, **settings) -> Admission:
    s = RouterSettings(**{"max_queue_wait_s": 5.0, "tenant_max_share": 1.0, **settings})
    route = ONE.model_copy(update={"max_queued_per_replica": queue})
    return Admission([route], s, table({"one": 1}), TENANTS)


async def _served_order(adm: Admission, arrivals: list[tuple[str, str | None]]) -> list[str]:
    """Hold the only slot, queue `arrivals` (tenant, x-govllm-priority header) in order, then
    release one by one; the request path's step resolves each request's class."""
    model = adm.gates["one"].route
    step = ResolvePriority(adm._settings, TENANTS)
    _, holder = await adm.admit([model], "staff", set())
    order: list[str] = []

    async def one(tenant: str, asked: str | None, tag: str) -> None:
        ctx = _ctx(tenant, asked)
        await step(ctx)
        _, slot = await adm.admit([model], tenant, set(), ctx.priority)
        order.append(tag)
        await asyncio.sleep(0)
        slot.release()

    tasks = [asyncio.create_task(one(t, p, f"{t}:{p or '-'}:{i}")) for i, (t, p) in enumerate(arrivals)]
    await asyncio.sleep(0)
    holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    return order


def test_tenants_get_their_class_from_the_spec_and_kind_defaults():
    settings = RouterSettings()
    assert [settings.priority_class_of(t) for t in TENANTS] == ["interactive", "api", "api", "batch"]
    with pytest.raises(ValueError, match="unknown class 'urgent'"):
        ServingConfig(models=[A], tenants=[TenantSettings(id="x", name="x", kind="agency", priority="urgent")])
    with pytest.raises(ValueError, match="no router.priority_classes entry is default_for municipality"):
        ServingConfig(models=[A], tenants=[CITY],
                      router=RouterSettings(priority_classes=[{"name": "only", "default_for": ["agency"]}]))
    with pytest.raises(ValueError, match="min_share must be 0"):
        RouterSettings(priority_classes=[{"name": "a", "min_share": 0.1}])


def test_a_freed_slot_goes_to_the_most_important_class_then_fair_between_tenants():
    async def go():
        adm = fair(queue=8)
        order = await _served_order(adm, [("nightly", None), ("city", None), ("city", None),
                                          ("heavy", None), ("staff", None)])
        classes = [tag.split(":")[0] for tag in order]
        assert classes[0] == "staff"  # interactive first
        assert classes[1:4].count("city") == 2 and classes[1:4].count("heavy") == 1
        assert classes[4] == "nightly"  # batch last (its min_share is not due within 4 slots)
    asyncio.run(go())


def test_weighted_shares_through_the_gate():
    async def go():
        adm = fair(queue=40)
        order = await _served_order(adm, [("heavy", None)] * 20 + [("city", None)] * 20)
        first = [tag.split(":")[0] for tag in order[:24]]
        assert first.count("heavy") == 16 and first.count("city") == 8, first  # weight 2 : 1
    asyncio.run(go())


def test_a_request_may_lower_its_class_never_raise_it():
    async def go():
        adm = fair(queue=8)
        order = await _served_order(adm, [("city", None), ("staff", "batch"), ("nightly", "interactive")])
        tags = [tag.rsplit(":", 1)[0] for tag in order]
        assert tags == ["city:-", "staff:batch", "nightly:interactive"]  # staff lowered; nightly stays batch
    asyncio.run(go())


def _ctx(tenant: str, header_value: str | None = None, key_priority: str | None = None) -> RequestContext:
    headers = [(b"x-govllm-priority", header_value.encode())] if header_value is not None else []
    return RequestContext(request_id="r", operation="chat", scope={"headers": headers},
                          principal=Principal(tenant=tenant, user="u", priority=key_priority))


def test_the_priority_step_lowers_caps_and_refuses_unknown_names():
    async def go():
        step = ResolvePriority(RouterSettings(), TENANTS)
        cases = [(("staff",), "interactive"), (("staff", "batch"), "batch"), (("city", "Interactive"), "api"),
                 (("city", None, "batch"), "batch"), (("staff", "api", "gone"), "batch"),
                 (("nightly", "interactive"), "batch")]
        for args, expected in cases:
            ctx = _ctx(*args)
            await step(ctx)
            assert ctx.priority == expected, args
            assert (b"x-govllm-priority", expected.encode()) in ctx.response_headers
        with pytest.raises(APIError) as bad:
            await step(_ctx("staff", "urgent"))
        assert bad.value.status == 400 and bad.value.code == "invalid_priority"
        assert bad.value.param == "x-govllm-priority" and "interactive, api, batch" in bad.value.message
    asyncio.run(go())


def test_a_full_class_queue_pushes_out_the_flood_not_the_newcomer():
    async def go():
        adm = fair(queue=2)
        model = adm.gates["one"].route
        await adm.admit([model], "staff", set())  # the only slot
        flood = [asyncio.create_task(adm.admit([model], "city", set())) for _ in range(2)]
        await asyncio.sleep(0)
        quiet = asyncio.create_task(adm.admit([model], "heavy", set()))
        await asyncio.wait([flood[1]], timeout=1)
        assert flood[1].done() and not flood[0].done() and not quiet.done()
        with pytest.raises(APIError) as pushed:
            flood[1].result()
        assert pushed.value.status == 429 and pushed.value.code == "tenant_share_exceeded"
        assert int(pushed.value.headers["Retry-After"]) >= 1
        with pytest.raises(APIError) as shed:  # city now has the longest queue: its own request is shed
            await adm.admit([model], "city", set())
        assert shed.value.status == 503 and shed.value.code == "model_overloaded"
        gate = adm.gates["one"]
        assert gate.by_tenant["city"] == 1 and gate.by_tenant["heavy"] == 1 and len(gate.waiters) == 2
        for task in (flood[0], quiet):
            task.cancel()
        await asyncio.gather(flood[0], quiet, return_exceptions=True)
    asyncio.run(go())


def test_class_queues_are_separate_and_retry_after_counts_the_queue_ahead():
    async def go():
        adm = fair(queue=2)
        model = adm.gates["one"].route
        gate = adm.gates["one"]
        gate.service_s = 10.0
        await adm.admit([model], "staff", set())
        waiting = [asyncio.create_task(adm.admit([model], t, set())) for t in ("nightly", "heavy", "nightly")]
        await asyncio.sleep(0)
        staff = asyncio.create_task(adm.admit([model], "staff", set()))  # batch's full queue is not its
        await asyncio.sleep(0)
        assert not staff.done() and gate.waiters.size(0) == 1
        with pytest.raises(APIError) as batch:
            await adm.admit([model], "nightly", set())  # batch queue full of nightly's own requests
        assert batch.value.status == 503 and batch.value.code == "model_overloaded"
        assert batch.value.headers["Retry-After"] == "50"  # (4 ahead + itself) x 10 s / 1 slot
        assert gate.retry_after_s(0) == 20  # an interactive request has only its own class ahead
        for task in waiting + [staff]:
            task.cancel()
        await asyncio.gather(*waiting, staff, return_exceptions=True)
        assert not gate.waiters and gate.by_tenant == {"staff": 1}
    asyncio.run(go())


def test_an_api_key_carries_its_lower_class_to_the_principal():
    from serving.api_keys import KeyRecord, issue_key, verify

    plaintext, record = issue_key("staff", "nightly-job", priority="batch")
    stored = KeyRecord.from_json(record.to_json())
    assert stored.public()["priority"] == "batch"
    assert verify(plaintext, {stored.key_id: stored}).priority == "batch"
    legacy = record.to_json().replace(', "priority": "batch"', "")  # records issued before classes
    assert KeyRecord.from_json(legacy).priority is None


def test_a_key_may_not_be_issued_above_its_tenants_class():
    from typer.testing import CliRunner

    from cluster.spec.schema import DEFAULT_SPEC_PATH
    from govllm.cli.main import app

    # refused before the key store is touched: sample-city is a municipality (class api)
    out = CliRunner().invoke(app, ["keys", "create", "--tenant", "sample-city", "--user", "u",
                                   "--priority", "interactive", "--spec", str(DEFAULT_SPEC_PATH)])
    assert out.exit_code == 1 and "a key may have that class or a lower one: api, batch" in out.output


WIDE = ModelRoute(id="w", max_model_len=128, max_ongoing_per_replica=4, max_queued_per_replica=8)


def wide_admission(**settings) -> Admission:
    s = RouterSettings(**{"max_queue_wait_s": 5.0, "tenant_max_share": 1.0, **settings})
    return Admission([WIDE], s, table({"w": 1}))


def test_a_flood_alone_gets_every_slot():
    async def go():
        adm = wide_admission()
        slots = [await asyncio.wait_for(adm.admit([WIDE], "flood", set()), 1) for _ in range(4)]
        assert adm.gates["w"].inflight == 4 and adm.gates["w"].reserve() == 0
        for _, s in slots:
            s.release()
    asyncio.run(go())


def test_headroom_lets_a_quiet_tenant_start_at_once_beside_a_flood():
    async def go():
        adm = wide_admission()
        gate = adm.gates["w"]
        quiet = await adm.admit([WIDE], "quiet", set())  # the quiet tenant used the model a moment ago
        quiet[1].release()
        flood = [await adm.admit([WIDE], "flood", set()) for _ in range(3)]
        queued = asyncio.create_task(adm.admit([WIDE], "flood", set()))
        await asyncio.sleep(0)
        assert gate.reserve() == 1 and not queued.done()  # the flood waits one slot short of full
        model, slot = await asyncio.wait_for(adm.admit([WIDE], "quiet", set()), 0.5)  # no wait
        assert gate.inflight == 4 and gate.running["quiet"] == 1
        slot.release()
        await asyncio.sleep(0)
        assert not queued.done() and gate.running["flood"] == 3  # the kept slot stays kept
        flood[0][1].release()
        _, got = await asyncio.wait_for(queued, 1)  # a flood slot freed: its next request runs
        for s in [got] + [s for _, s in flood[1:]]:
            s.release()
        assert gate.inflight == 0 and not gate.waiters
    asyncio.run(go())


def test_headroom_opens_once_the_other_tenants_are_gone():
    async def go():
        adm = wide_admission(fair_active_s=0.05)
        gate = adm.gates["w"]
        (await adm.admit([WIDE], "quiet", set()))[1].release()
        flood = [await adm.admit([WIDE], "flood", set()) for _ in range(3)]
        queued = asyncio.create_task(adm.admit([WIDE], "flood", set()))
        await asyncio.sleep(0.1)  # the quiet tenant is no longer using the model
        assert not queued.done()
        adm.resize()  # what every registry refresh does
        _, got = await asyncio.wait_for(queued, 1)
        assert gate.inflight == 4 and gate.reserve() == 0
        for s in [got] + [s for _, s in flood]:
            s.release()
    asyncio.run(go())


def test_a_waiting_tenant_below_its_share_gets_the_kept_slot():
    async def go():
        adm = wide_admission()
        gate = adm.gates["w"]
        (await adm.admit([WIDE], "quiet", set()))[1].release()
        flood = [await adm.admit([WIDE], "flood", set()) for _ in range(3)]
        quiet = await adm.admit([WIDE], "quiet", set())  # takes the kept slot: the model is full
        flood_waits = asyncio.create_task(adm.admit([WIDE], "flood", set()))
        quiet_waits = asyncio.create_task(adm.admit([WIDE], "quiet", set()))
        await asyncio.sleep(0)
        quiet[1].release()  # the kept slot frees: the quiet tenant (0 of its 2) gets it, not the flood
        _, got = await asyncio.wait_for(quiet_waits, 1)
        assert not flood_waits.done() and gate.running == {"flood": 3, "quiet": 1}
        flood_waits.cancel()
        for s in [got] + [s for _, s in flood]:
            s.release()
    asyncio.run(go())
