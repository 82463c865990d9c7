"""Autoscaling pieces without a cluster: the policy's arithmetic, the CPU scaling plan, and the
router's cold-start wait (serving/router/cold_start.py) with a stand-in for the Serve handle.

The real Serve handle, the real scale from zero and the measured cold start are in
tests/scheduling/test_autoscaling.py on the shipped scaling spec.
"""

from __future__ import annotations

import asyncio

import pytest

from cluster.sizing.cpu_plan import plan_cpu_models
from cluster.sizing.throughput import autoscaling_target
from cluster.spec.schema import load_spec, parse_spec
from serving.autoscaling import ONGOING_METRIC, QUEUED_METRIC, data_plane_policy
from serving.config import ModelRoute
from serving.request import APIError
from serving.router.cold_start import ColdStart
from serving.router.endpoints import EndpointTable


class _Cfg:
    target_ongoing_requests = 3


class _Ctx:
    def __init__(self, *, target: int, metrics: dict | None, queued: float = 0.0,
                 running: int | None = None):
        self.config = _Cfg()
        self.target_num_replicas = target
        self.current_num_replicas = target if running is None else running
        self.aggregated_metrics = {ONGOING_METRIC: metrics} if metrics is not None else {}
        self.total_queued_requests = queued


@pytest.mark.parametrize(
    "target, metrics, queued, expected",
    [
        (1, {"r1": 4.0}, 0.0, 2),            # a full replica (4 > target 3): one more
        (2, {"r1": 4.0, "r2": 4.0}, 0.0, 3),
        (3, {"r1": 1.0, "r2": 0.0, "r3": 0.0}, 0.0, 1),  # the spike is over
        (1, {"r1": 0.0}, 0.0, 0),            # idle: 0 (Serve's min_replicas keeps 1 unless on demand)
        (0, None, 1.0, 1),                   # at zero, a router's wake-up call waits: start one
        (0, None, 0.0, 0),                   # at zero and nobody waits: stay at zero
        (2, None, 0.0, 2),                   # no report yet (replicas starting): hold
        (1, {"r1": 0.0}, 0.5, 1),            # a wake-up call still counted: keep the replica
    ],
)
def test_policy_counts_data_plane_requests_and_handle_queue(target, metrics, queued, expected):
    assert data_plane_policy(_Ctx(target=target, metrics=metrics, queued=queued))[0] == expected


def test_policy_does_not_cancel_a_scale_up_while_its_replicas_start():
    starting = _Ctx(target=3, metrics={"r1": 4.0}, running=1)  # 4 in flight: alone, 2 would do
    assert data_plane_policy(starting)[0] == 3
    running = _Ctx(target=3, metrics={"r1": 4.0, "r2": 0.0, "r3": 0.0})  # all up: 2 will do
    assert data_plane_policy(running)[0] == 2


def test_policy_counts_requests_waiting_in_the_routers():
    """A replica runs at most max_ongoing (4); the spike's rest waits in the routers, and the
    policy sees it there: one full replica and 8 waiting ask for 3 replicas at once."""
    ctx = _Ctx(target=1, metrics={"r1": 4.0})
    ctx.aggregated_metrics[QUEUED_METRIC] = {"r1": 8.0}
    assert data_plane_policy(ctx)[0] == 4  # Serve caps it at max_replicas


def test_registry_shares_the_routers_queues_among_the_models_replicas():
    from serving.registry import EndpointRegistry

    registry = EndpointRegistry.func_or_class()

    async def go():
        assert await registry.heartbeat("m", "r1", "http://h:1", 4) == 0.0
        await registry.heartbeat("m", "r2", "http://h:2", 4)
        await registry.router_view("router-a", [], {"m": 6})
        await registry.router_view("router-b", [], {"m": 2, "other": 5})
        assert await registry.heartbeat("m", "r1", "http://h:1", 4) == 4.0  # (6 + 2) / 2 replicas
        await registry.router_view("router-a", [], {})  # its queue emptied
        await registry.forget_router("router-b")
        assert await registry.heartbeat("m", "r1", "http://h:1", 4) == 0.0

    asyncio.run(go())


def test_cpu_targets_are_derived_from_max_ongoing_and_on_demand_from_min_zero():
    spec, _ = load_spec("cluster/specs/local-scaling.yaml")
    plans = {p.model_id: p for p in plan_cpu_models(spec)}
    for model in spec.self_hosted():
        p = plans[model.id]
        assert p.target_ongoing_requests == autoscaling_target(model.replicas.max_ongoing_requests)
        assert 1 <= p.target_ongoing_requests <= p.max_ongoing_requests
    assert plans["tiny-ondemand-ja"].on_demand and not plans["tiny-qwen2-ja"].on_demand
    assert (plans["tiny-llama-ja"].min_replicas, plans["tiny-llama-ja"].max_replicas) == (2, 2)
    assert (plans["tiny-qwen2-ja"].min_replicas, plans["tiny-qwen2-ja"].max_replicas) == (1, 3)


def test_scaling_spec_renders_delays_zero_minimum_and_on_demand_route():
    from cluster.render.serve_config import app_args

    spec, spec_dir = load_spec("cluster/specs/local-scaling.yaml")
    args = app_args(spec, spec_dir).to_config()
    auto = {c["model_loading_config"]["model_id"]: c["deployment_config"]["autoscaling_config"]
            for c in args["llm_configs"]}
    assert auto["tiny-ondemand-ja"]["min_replicas"] == auto["tiny-ondemand-ja"]["initial_replicas"] == 0
    for config in auto.values():
        for key, value in spec.autoscaling.serve_options().items():
            assert config[key] == value
    routes = {m["id"]: m for m in args["serving"]["models"]}
    assert routes["tiny-ondemand-ja"]["on_demand"] and not routes["tiny-qwen2-ja"]["on_demand"]
    # the local default sets no delay: Serve's own defaults apply
    default, default_dir = load_spec(None)
    for c in app_args(default, default_dir).to_config()["llm_configs"]:
        assert "downscale_delay_s" not in c["deployment_config"]["autoscaling_config"]


def test_a_typed_target_is_refused_with_the_reason():
    spec, _ = load_spec(None)
    data = spec.model_dump(mode="json", exclude_unset=True)
    data["models"][0]["replicas"] = {"target_ongoing_requests": 16}
    with pytest.raises(Exception, match="no longer set by hand"):
        parse_spec(data)


class _Handle:
    """Stands in for a Serve DeploymentHandle: `options(method_name=...).remote()` awaitable;
    answers when `replica_up` is set (as Serve answers once a replica runs)."""

    def __init__(self):
        self.calls: list[str] = []
        self.replica_up = asyncio.Event()

    def options(self, method_name: str):
        self.calls.append(method_name)
        return self

    def remote(self):
        return self.replica_up.wait()


ON_DEMAND = ModelRoute(id="od", max_model_len=128, on_demand=True)
ALWAYS = ModelRoute(id="a", max_model_len=128)


def _replica(table: EndpointTable, *models: str) -> None:
    """The registry now lists one replica of each of `models` (and no other)."""
    table.update({m: [{"replica_id": f"{m}-r", "url": f"http://h/{m}"}] for m in models})


def test_cold_start_wakes_once_and_releases_every_waiter_when_a_replica_appears():
    async def go():
        table, handle = EndpointTable(), _Handle()
        cold = ColdStart(table, {"od": handle}, wait_s=5, poll_s=0.01)
        waiters = [asyncio.create_task(cold.ready([ON_DEMAND])) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert handle.calls == ["wake"], "one wake call however many requests wait"
        assert not any(w.done() for w in waiters)
        handle.replica_up.set()
        _replica(table, "od")
        await asyncio.wait_for(asyncio.gather(*waiters), 1)
        await asyncio.sleep(0.05)
        assert "od" in cold.last_cold_start_s
        await cold.ready([ON_DEMAND])  # a replica now: no wait, no new wake
        assert handle.calls == ["wake"]

    asyncio.run(go())


def test_cold_start_gives_up_with_503_and_retry_after_past_the_bound():
    async def go():
        table, handle = EndpointTable(), _Handle()
        cold = ColdStart(table, {"od": handle}, wait_s=0.2, poll_s=0.01)
        with pytest.raises(APIError) as refused:
            await cold.ready([ON_DEMAND])
        err = refused.value
        assert err.status == 503 and err.code == "model_starting"
        assert int(err.headers["Retry-After"]) >= 1
        assert "od" in err.message and "starting" in err.message
        await cold.close()

    asyncio.run(go())


def test_cold_start_does_not_wait_when_a_fallback_is_live_or_the_model_is_not_on_demand():
    async def go():
        table, handle = EndpointTable(), _Handle()
        _replica(table, "a")
        cold = ColdStart(table, {"od": handle}, wait_s=30, poll_s=0.01)
        # alias [od, a]: a answers now; od is woken in the background for later requests
        await asyncio.wait_for(cold.ready([ON_DEMAND, ALWAYS]), 1)
        await asyncio.sleep(0.01)
        assert handle.calls == ["wake"]
        # a model that is not on demand and has no replica: admission's own 503, no wait
        await asyncio.wait_for(cold.ready([ModelRoute(id="b", max_model_len=128)]), 1)
        await cold.close()

    asyncio.run(go())


def test_gpu_model_on_demand_gets_min_zero_from_the_planner():
    from cluster.render.serve_config import app_args
    from cluster.sizing.cluster_plan import plan_cluster

    spec, spec_dir = load_spec("cluster/specs/gov-cloud-example.yaml")
    data = spec.model_dump(mode="json", exclude_unset=True)
    (model,) = [m for m in data["models"] if m["id"] == "sarashina2.2-3b"]
    model["sizing"]["on_demand"] = True
    on_demand = parse_spec(data)
    before = {m.model_id: m.bounds for m in plan_cluster(spec, spec_dir).models}
    after = {m.model_id: m.bounds for m in plan_cluster(on_demand, spec_dir).models}
    assert after["sarashina2.2-3b"].min_replicas == 0
    assert after["sarashina2.2-3b"].max_replicas == before["sarashina2.2-3b"].max_replicas >= 1
    assert {k: v for k, v in after.items() if k != "sarashina2.2-3b"} == {
        k: v for k, v in before.items() if k != "sarashina2.2-3b"}
    routes = {m.id: m for m in app_args(on_demand, spec_dir).serving.models}
    assert routes["sarashina2.2-3b"].on_demand and not routes["elyza-jp-8b"].on_demand
