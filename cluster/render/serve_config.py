"""Cluster spec + its plan + a target -> arguments of the Serve application (serving.app:build_app).

This is the only place spec values become Ray Serve LLM `LLMConfig`s and the
router's ServingConfig. `govllm serve` passes the result straight to
`build_app`; `govllm render serve-config` writes the same arguments as a Serve
config file, and the Helm chart embeds them (cluster/render/helm_values.py, with
the pod target), so every way of running uses identical numbers. GPU engines take
theirs from the cluster plan, computed once per render (`planned_models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.render.target import LOCAL, RenderTarget
from cluster.sizing.cluster_plan import ClusterPlan, ModelPlan, plan_cluster
from cluster.sizing.cpu_plan import plan_cpu_model
from cluster.sizing.inputs import PlanDoesNotFit
from cluster.spec.schema import ClusterSpec, ModelSpec
from serving.app_args import AppArgs
from serving.config import (
    APP_IMPORT_PATH,
    AUTOSCALING_POLICY_IMPORT_PATH,
    AuditSettings,
    AuthSettings,
    DirectorySink,
    LocalKeyFile,
    ModelRoute,
    ServingConfig,
    StoreSettings,
)
from serving.model_kinds import ENGINE_KWARGS as KIND_ENGINE_KWARGS
from serving.observability.tracing.engine import engine_tracing

#: Engine defaults on the CPU build. float32 because bfloat16 kills the worker with SIGILL
#: on these machines; eager mode because compiling graphs costs more than it saves here.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"dtype": "float32", "enforce_eager": True}


def state_dir(spec: ClusterSpec) -> Path:
    return Path(spec.state_dir).resolve()


def dev_model_dir(spec: ClusterSpec, model: ModelSpec) -> Path:
    return state_dir(spec) / "models" / model.id


def model_source(spec: ClusterSpec, model: ModelSpec, spec_dir: Path,
                 target: RenderTarget = LOCAL) -> str | dict[str, str]:
    staged = target.staged_path(model.id)
    if staged is not None:
        return staged
    src = model.source
    if src.dev_model is not None:
        return str(dev_model_dir(spec, model))
    if src.path is not None:
        return str((spec_dir / src.path).resolve())
    return {"bucket_uri": src.uri}


def llm_config(
    spec: ClusterSpec, model: ModelSpec, spec_dir: Path, *, model_plan: ModelPlan | None = None,
    target: RenderTarget = LOCAL,
) -> dict[str, Any]:
    """The LLMConfig (as a dict) for one model.

    GPU deployments take their engine arguments, accelerator, placement group
    and replica bounds from the sizing planner (`model_plan`, required for them);
    CPU deployments from the spec as written.
    """
    engine_kwargs: dict[str, Any] = {}
    env_vars: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if spec.engine.device == "cpu":
        engine_kwargs.update(CPU_ENGINE_DEFAULTS)
        env_vars["VLLM_CPU_KVCACHE_SPACE"] = str(spec.engine.cpu_kv_cache_space_gib)
        if spec.engine.cpu_omp_threads_bind != "auto":  # auto: vLLM's default, left unset
            env_vars["VLLM_CPU_OMP_THREADS_BIND"] = spec.engine.cpu_omp_threads_bind
        extra["accelerator_type"] = None
        extra["placement_group_config"] = {"bundles": [{"CPU": spec.engine.cpus_per_replica}]}
    engine_kwargs.update(spec.engine.engine_kwargs)
    engine_kwargs.update(model.engine_kwargs)
    engine_kwargs.update(model_feature_kwargs(model, spec_dir))
    if model.structured_outputs is not None and not model.structured_outputs.structural_tag_tool_calls:
        env_vars["VLLM_ENFORCE_STRICT_TOOL_CALLING"] = "0"
    tracing_kwargs, tracing_env = engine_tracing(spec.tracing, app=spec.name, model_id=model.id)
    engine_kwargs.update(tracing_kwargs)  # vLLM's own request span (serving/observability/tracing/engine.py)
    env_vars.update(tracing_env)
    engine_kwargs["max_model_len"] = model.max_model_len
    if spec.engine.device == "cpu":
        cpu_plan = plan_cpu_model(model)
        min_replicas, max_replicas = cpu_plan.min_replicas, cpu_plan.max_replicas
        ongoing_target = cpu_plan.target_ongoing_requests
    else:
        planned = _required(model_plan, model)
        sizing = planned.sizing
        if not sizing.fits:
            raise PlanDoesNotFit(f"{model.id} does not fit: " + "; ".join(sizing.reasons))
        engine_kwargs.update(sizing.engine_kwargs())
        extra["accelerator_type"] = sizing.request.gpu.ray_accelerator_type
        extra["placement_group_config"] = _gpu_placement(sizing.gpus_per_replica,
                                                         sizing.pipeline_parallel_size,
                                                         spec.engine.cpus_per_replica)
        min_replicas, max_replicas = planned.bounds.min_replicas, planned.bounds.max_replicas
        ongoing_target = sizing.target_ongoing_requests
    return {
        "model_loading_config": {
            "model_id": model.id,
            "model_source": model_source(spec, model, spec_dir, target),
        },
        "engine_kwargs": engine_kwargs,
        "log_engine_metrics": spec.engine.metrics_exporter == "ray",
        "runtime_env": {"env_vars": env_vars} if env_vars else None,
        "deployment_config": {
            "autoscaling_config": {
                "min_replicas": min_replicas,
                "initial_replicas": min_replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": ongoing_target,
                "policy": {"policy_function": AUTOSCALING_POLICY_IMPORT_PATH},
                **spec.autoscaling.serve_options(),  # delays; unset: Serve's defaults
            },
        },
        **extra,
    }


def model_feature_kwargs(model: ModelSpec, spec_dir: Path) -> dict[str, Any]:
    """vLLM arguments for the model's kind, parsers, chat template and guided-decoding defaults.

    Each comes from its own spec field (never from engine_kwargs, which refuses these names),
    so /v1/models reports exactly what the engine was started with.
    """
    out: dict[str, Any] = dict(KIND_ENGINE_KWARGS[model.kind])
    if model.tool_call_parser:
        out["enable_auto_tool_choice"] = True
        out["tool_call_parser"] = model.tool_call_parser
    if model.reasoning_parser:
        out["reasoning_parser"] = model.reasoning_parser
    if model.chat_template:
        out["chat_template"] = str((spec_dir / model.chat_template).resolve())
    if model.structured_outputs is not None:
        out["structured_outputs_config"] = model.structured_outputs.model_dump(
            exclude={"structural_tag_tool_calls"})
    return out


def _gpu_placement(gpus: int, pipeline_stages: int, cpus: float) -> dict[str, Any]:
    """One bundle per vLLM worker; one node unless the replica has pipeline stages."""
    return {
        "bundles": [{"GPU": 1, "CPU": cpus} for _ in range(gpus)],
        "strategy": "STRICT_PACK" if pipeline_stages == 1 else "PACK",
    }


def _required(model_plan: ModelPlan | None, model: ModelSpec) -> ModelPlan:
    if model_plan is None:
        raise ValueError(f"{model.id}: GPU engines are rendered from the cluster plan; pass its "
                         "model plan (planned_models)")
    return model_plan


def planned_models(spec: ClusterSpec, spec_dir: Path,
                   plan: ClusterPlan | None = None) -> dict[str, ModelPlan]:
    """Each self-hosted model's plan for GPU engines ({} for CPU engines, sized as written).

    The planner runs here once per render unless the caller already holds the plan.
    """
    if spec.engine.device != "gpu":
        return {}
    plan = plan or plan_cluster(spec, spec_dir)
    if not plan.fits:
        raise PlanDoesNotFit("the cluster plan does not fit:\n  " + "\n  ".join(plan.problems))
    return {m.model_id: m for m in plan.models}


def store_url(spec: ClusterSpec) -> str:
    if spec.store.url is not None:
        return spec.store.url
    return f"redis://127.0.0.1:{spec.store.port}/0"


def audit_settings(spec: ClusterSpec) -> AuditSettings | None:
    """The audit pipeline's settings; unset paths default under state_dir."""
    audit = spec.audit
    if not audit.enabled:
        return None
    sdir = state_dir(spec)
    sink = audit.sink or DirectorySink(path=str(sdir / "audit-store"))
    if isinstance(sink, DirectorySink):
        sink = DirectorySink(path=str(Path(sink.path).resolve()))
    keys = audit.keys or LocalKeyFile(path=str(sdir / "audit.key"))
    if isinstance(keys, LocalKeyFile):
        keys = LocalKeyFile(path=str(Path(keys.path).resolve()))
    return AuditSettings(
        spool_dir=str(Path(audit.spool_dir).resolve() if audit.spool_dir else sdir / "audit-spool"),
        sink=sink,
        keys=keys,
        batch_max_records=audit.batch_max_records,
        batch_max_s=audit.batch_max_s,
    )


def replica_capacity(spec: ClusterSpec, model: ModelSpec,
                     model_plan: ModelPlan | None = None) -> tuple[int, int]:
    """(requests one replica runs at once, requests queued per replica) for router admission.

    GPU replicas run the planner's max_num_seqs at once and the routers queue one more
    batch of that size; CPU replicas take the spec's values as written. A vendor endpoint
    is one "replica" whose capacity is the contract's concurrency (queued: as many again).
    """
    if model.source.endpoint is not None:
        concurrency = model.source.endpoint.limits.max_concurrency
        return concurrency, concurrency
    if spec.engine.device == "gpu":
        seqs = _required(model_plan, model).sizing.max_num_seqs
        return seqs, seqs
    return model.replicas.max_ongoing_requests, model.replicas.max_queued_requests


def rendered_min_replicas(spec: ClusterSpec, model: ModelSpec, model_plan: ModelPlan | None = None) -> int | None:
    """The model's rendered min_replicas (0: on demand); None for a vendor endpoint."""
    if model.source.endpoint is not None:
        return None
    if spec.engine.device == "gpu":
        return _required(model_plan, model).bounds.min_replicas
    return plan_cpu_model(model).min_replicas


def store_settings(spec: ClusterSpec, target: RenderTarget = LOCAL) -> StoreSettings:
    """How the router and the CLI reach the shared store."""
    return StoreSettings(
        url=store_url(spec), url_env=target.store_url_env, namespace=spec.store.namespace,
        timeout_s=spec.store.timeout_s, cluster=spec.store.cluster,
    )


def serving_config(spec: ClusterSpec, *, plans: dict[str, ModelPlan] | None = None,
                   target: RenderTarget = LOCAL) -> ServingConfig:
    """The router's config; `spec` is the target's view of it (`RenderTarget.spec_view`)."""
    capacity = {m.id: replica_capacity(spec, m, (plans or {}).get(m.id)) for m in spec.models}
    return ServingConfig(
        app_name=spec.name,
        router=spec.router,
        auth=AuthSettings(enabled=spec.auth.enabled, oidc=spec.auth.oidc,
                          key_staleness_s=spec.auth.key_staleness_s),
        tenants=tuple(spec.tenants),
        store=store_settings(spec, target),
        audit=audit_settings(spec),
        tracing=spec.tracing,
        models=tuple(
            ModelRoute(
                id=m.id,
                max_model_len=m.max_model_len,
                family=m.family,
                revision=m.revision,
                max_confidentiality=m.max_confidentiality,
                max_ongoing_per_replica=capacity[m.id][0],
                max_queued_per_replica=capacity[m.id][1],
                endpoint=m.source.endpoint,
                price=m.price,
                kind=m.kind,
                tool_call_parser=m.tool_call_parser,
                reasoning_parser=m.reasoning_parser,
                pii=m.pii,
                on_demand=rendered_min_replicas(spec, m, (plans or {}).get(m.id)) == 0,
            )
            for m in spec.models
        ),
        aliases={k: tuple(v) for k, v in spec.all_aliases().items()},
    )


def app_args(spec: ClusterSpec, spec_dir: Path, *, plan: ClusterPlan | None = None,
             target: RenderTarget = LOCAL) -> AppArgs:
    """Arguments of serving.app:build_app for this spec at this target (planned once)."""
    plans = planned_models(spec, spec_dir, plan)
    spec = target.spec_view(spec)
    return AppArgs(
        serving=serving_config(spec, plans=plans, target=target),
        llm_configs=[llm_config(spec, m, spec_dir, model_plan=plans.get(m.id), target=target)
                     for m in spec.self_hosted()],
    )


def serve_config_file(spec: ClusterSpec, spec_dir: Path, *, plan: ClusterPlan | None = None,
                      target: RenderTarget = LOCAL) -> dict[str, Any]:
    """A Ray Serve config file (the `serveConfigV2` shape) running the same application."""
    return {
        "applications": [
            {
                "name": spec.name,
                "route_prefix": "/",
                "import_path": APP_IMPORT_PATH,
                "args": app_args(spec, spec_dir, plan=plan, target=target).to_config(),
            }
        ]
    }
