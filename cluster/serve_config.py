"""Cluster spec -> arguments of the Serve application (serving.app:build_app).

This is the only place spec values become Ray Serve LLM `LLMConfig`s and the
router's ServingConfig. `govllm serve` passes the result straight to
`build_app`; `govllm render serve-config` writes the same dict as a Serve
config file, and the Helm chart embeds that, so every way of running uses
identical numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.spec import ClusterSpec, ModelSpec
from serving.config import (
    APP_IMPORT_PATH,
    AUTOSCALING_POLICY_IMPORT_PATH,
    AuthSettings,
    ModelRoute,
    ServingConfig,
)

#: Engine defaults on the CPU build. float32 because bfloat16 kills the worker with SIGILL
#: on these machines; eager mode because compiling graphs costs more than it saves here.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"dtype": "float32", "enforce_eager": True}


def state_dir(spec: ClusterSpec) -> Path:
    return Path(spec.state_dir).resolve()


def dev_model_dir(spec: ClusterSpec, model: ModelSpec) -> Path:
    return state_dir(spec) / "models" / model.id


def model_source(spec: ClusterSpec, model: ModelSpec, spec_dir: Path) -> str | dict[str, str]:
    src = model.source
    if src.dev_model is not None:
        return str(dev_model_dir(spec, model))
    if src.path is not None:
        return str((spec_dir / src.path).resolve())
    return {"bucket_uri": src.uri}


def llm_config(spec: ClusterSpec, model: ModelSpec, spec_dir: Path) -> dict[str, Any]:
    """The LLMConfig (as a dict) for one model."""
    engine_kwargs: dict[str, Any] = {}
    env_vars: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if spec.engine.device == "cpu":
        engine_kwargs.update(CPU_ENGINE_DEFAULTS)
        env_vars["VLLM_CPU_KVCACHE_SPACE"] = str(spec.engine.cpu_kv_cache_space_gib)
        extra["accelerator_type"] = None
        extra["placement_group_config"] = {"bundles": [{"CPU": spec.engine.cpus_per_replica}]}
    engine_kwargs.update(spec.engine.engine_kwargs)
    engine_kwargs.update(model.engine_kwargs)
    engine_kwargs["max_model_len"] = model.max_model_len
    bounds = model.replicas
    return {
        "model_loading_config": {
            "model_id": model.id,
            "model_source": model_source(spec, model, spec_dir),
        },
        "engine_kwargs": engine_kwargs,
        "runtime_env": {"env_vars": env_vars} if env_vars else None,
        "deployment_config": {
            "autoscaling_config": {
                "min_replicas": bounds.min,
                "initial_replicas": bounds.min,
                "max_replicas": bounds.max,
                "target_ongoing_requests": bounds.target_ongoing_requests,
                "policy": {"policy_function": AUTOSCALING_POLICY_IMPORT_PATH},
            },
        },
        **extra,
    }


def serving_config(spec: ClusterSpec) -> ServingConfig:
    auth = spec.auth.model_dump()
    auth["key_store_path"] = str(Path(spec.auth.key_store_path).resolve())
    return ServingConfig(
        app_name=spec.name,
        router=spec.router,
        auth=AuthSettings(**auth),
        models=tuple(
            ModelRoute(
                id=m.id,
                max_model_len=m.max_model_len,
                family=m.family,
                revision=m.revision,
            )
            for m in spec.models
        ),
        aliases={k: tuple(v) for k, v in spec.all_aliases().items()},
    )


def app_args(spec: ClusterSpec, spec_dir: Path) -> dict[str, Any]:
    """Arguments of serving.app:build_app for this spec."""
    return {
        "serving": serving_config(spec).model_dump(mode="json"),
        "llm_configs": [llm_config(spec, m, spec_dir) for m in spec.models],
    }


def serve_config_file(spec: ClusterSpec, spec_dir: Path) -> dict[str, Any]:
    """A Ray Serve config file (the `serveConfigV2` shape) running the same application."""
    return {
        "applications": [
            {
                "name": spec.name,
                "route_prefix": "/",
                "import_path": APP_IMPORT_PATH,
                "args": app_args(spec, spec_dir),
            }
        ]
    }
