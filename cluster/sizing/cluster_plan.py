"""Plan a whole cluster spec: one SizingPlan and replica bounds per model, GPUs per class.

This is the computation behind `govllm plan --spec` and, for GPU engines,
behind the Serve config (`cluster.render.serve_config`): the same numbers reach the
table an operator reads and the LLMConfig Ray Serve runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cluster.catalog.cards import CatalogError, gpu_catalog, model_catalog
from cluster.sizing.inputs import PlanningError, resolve_model
from cluster.sizing.planner import SizingPlan, SizingRequest, plan
from cluster.sizing.throughput import ReplicaPlan, replica_bounds
from cluster.spec.schema import ClusterSpec, ModelSpec


@dataclass(frozen=True)
class ModelPlan:
    model_id: str
    sizing: SizingPlan
    traffic_share: float
    bounds: ReplicaPlan

    @property
    def gpus_at_max(self) -> int:
        return self.bounds.max_replicas * self.sizing.gpus_per_replica

    @property
    def gpus_at_min(self) -> int:
        return self.bounds.min_replicas * self.sizing.gpus_per_replica

    def to_json(self) -> dict[str, Any]:
        data = self.sizing.to_json()
        data.update({
            "traffic_share": round(self.traffic_share, 4),
            "peak_requests_per_s": round(self.bounds.peak_requests_per_s, 3),
            "requests_per_s_per_replica": round(self.bounds.requests_per_s_per_replica, 3),
            "min_replicas": self.bounds.min_replicas,
            "max_replicas": self.bounds.max_replicas,
            "gpus_at_min": self.gpus_at_min,
            "gpus_at_max": self.gpus_at_max,
        })
        return data


@dataclass(frozen=True)
class EndpointPlan:
    """A vendor-hosted model: not sized (no GPUs of ours); its capacity is its contract."""

    model_id: str
    provider: str
    max_concurrency: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_confidentiality: int

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model_id, "sized": False, "provider": self.provider,
                "max_concurrency": self.max_concurrency,
                "requests_per_minute": self.requests_per_minute,
                "tokens_per_minute": self.tokens_per_minute,
                "max_confidentiality": self.max_confidentiality}


def endpoint_plans(spec: ClusterSpec) -> list[EndpointPlan]:
    """The spec's vendor endpoints as the plan reports them: capacity from the contract."""
    out = []
    for m in spec.endpoints():
        ep = m.source.endpoint
        out.append(EndpointPlan(m.id, ep.terms.provider, ep.limits.max_concurrency,
                                ep.limits.requests_per_minute, ep.limits.tokens_per_minute,
                                m.max_confidentiality))
    return out


@dataclass(frozen=True)
class ClusterPlan:
    models: list[ModelPlan]
    problems: list[str]
    endpoints: list[EndpointPlan] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    def gpus_per_class(self) -> dict[str, dict[str, int]]:
        totals: dict[str, dict[str, int]] = defaultdict(lambda: {"min": 0, "max": 0})
        for m in self.models:
            totals[m.sizing.request.gpu.id]["min"] += m.gpus_at_min
            totals[m.sizing.request.gpu.id]["max"] += m.gpus_at_max
        return dict(totals)

    def get(self, model_id: str) -> ModelPlan:
        return next(m for m in self.models if m.model_id == model_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "problems": self.problems,
            "gpus_per_class": self.gpus_per_class(),
            "models": [m.to_json() for m in self.models],
            "endpoints": [e.to_json() for e in self.endpoints],
        }


def _shares(spec: ClusterSpec) -> dict[str, float]:
    """Explicit traffic shares; the rest of the traffic split evenly over the others."""
    given = {m.id: m.sizing.traffic_share for m in spec.models if m.sizing and m.sizing.traffic_share}
    rest = [m.id for m in spec.self_hosted() if m.id not in given]
    left = max(0.0, 1.0 - sum(given.values()))
    return {**given, **{mid: left / len(rest) for mid in rest}} if rest else given


def sizing_request(spec: ClusterSpec, model: ModelSpec, spec_dir: Path) -> SizingRequest:
    """The planner's input for one GPU model of the spec."""
    sizing, load = model.sizing, spec.load
    assert sizing is not None and load is not None, "validated by ClusterSpec"
    card = model_catalog().get(sizing.catalog) if sizing.catalog else None
    pool = next(p for p in spec.gpu_pools if p.gpu == sizing.gpu)
    gpu = gpu_catalog().get(sizing.gpu)
    if pool.reported_memory_gib:
        gpu = gpu.model_copy(update={"reported_memory_gib": pool.reported_memory_gib,
                                     "reported_memory_kind": "measured"})
    where = f"models[{model.id}].sizing"
    resolved = resolve_model(
        card=card,
        hf_config=spec_dir / sizing.hf_config if sizing.hf_config else None,
        supplied=sizing.architecture.supplied() if sizing.architecture else None,
        params_billion=sizing.params_billion,
        where=where,
        supply_hint=f"supply them in {where}.architecture or point {where}.hf_config at the "
        "delivered config.json",
    )
    pooling = model.kind != "chat"
    return SizingRequest(
        model=model.id,
        shape=resolved.shape,
        params=resolved.params,
        gpu=gpu,
        max_model_len=model.max_model_len,
        quantization=sizing.quantization,
        kv_cache_dtype=sizing.kv_cache_dtype,
        concurrency=sizing.concurrency,
        gpu_memory_utilization=sizing.gpu_memory_utilization or SizingRequest.gpu_memory_utilization,
        tensor_parallel_size=sizing.tensor_parallel_size,
        gpus_per_node=pool.gpus_per_node,
        allowed_quantizations=card.quantizations if card else SizingRequest.allowed_quantizations,
        context_length=resolved.context_length,
        # a pooling model (embedding, rerank) reads its input and generates nothing
        typical_sequence_tokens=load.mean_input_tokens + (0 if pooling else load.mean_output_tokens),
        mean_context_tokens=load.mean_input_tokens + (0 if pooling else load.mean_output_tokens // 2),
        overhead_bytes=int(sizing.overhead_gib * 2**30) if sizing.overhead_gib is not None else None,
        measured_decode_tokens_per_s=sizing.decode_tokens_per_s,
        pooling=pooling,
    )


def plan_model(spec: ClusterSpec, model: ModelSpec, spec_dir: Path, *,
               share: float | None = None) -> ModelPlan:
    """Size one GPU model and bound its replicas from the spec's load."""
    load = spec.load
    assert load is not None
    try:
        request = sizing_request(spec, model, spec_dir)
    except (CatalogError, ValueError) as exc:
        raise PlanningError(str(exc)) from None
    sizing = plan(request, alternatives=True)
    share = _shares(spec)[model.id] if share is None else share
    per_replica = sizing.throughput.requests_per_s(load.mean_input_tokens, load.mean_output_tokens)
    bounds = replica_bounds(
        peak_requests_per_s=load.peak_requests_per_s * share,
        baseline_fraction=load.baseline_fraction,
        requests_per_s_per_replica=per_replica,
        floor=load.min_replicas,
    )
    if model.sizing is not None and model.sizing.on_demand:  # scale to zero when idle
        bounds = replace(bounds, min_replicas=0)
    return ModelPlan(model_id=model.id, sizing=sizing, traffic_share=share, bounds=bounds)


def plan_cluster(spec: ClusterSpec, spec_dir: Path) -> ClusterPlan:
    """Plan every model of a GPU spec; `problems` lists what does not fit and why."""
    if spec.engine.device != "gpu":
        raise PlanningError("govllm plan --spec sizes GPU deployments; this spec has engine.device cpu")
    shares = _shares(spec)
    models = [plan_model(spec, m, spec_dir, share=shares[m.id]) for m in spec.self_hosted()]
    problems = [f"{m.model_id}: {r}" for m in models for r in m.sizing.reasons]
    result = ClusterPlan(models=models, problems=problems, endpoints=endpoint_plans(spec))
    for pool in spec.gpu_pools:
        needed = result.gpus_per_class().get(pool.gpu, {"max": 0})["max"]
        if pool.max_gpus is not None and needed > pool.max_gpus:
            problems.append(
                f"gpu_pools[{pool.gpu}]: the models need up to {needed} GPUs at peak, "
                f"the pool allows {pool.max_gpus}; raise max_gpus, quantise, or lower the load"
            )
    return result
