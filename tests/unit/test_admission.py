"""Admission gates: bounded slots and queue per model, fair refusal, spill-over to the alias's next model."""

from __future__ import annotations

import asyncio

import pytest

from serving.config import ModelRoute, RouterSettings
from serving.request import APIError
from serving.router.admission import Admission
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
