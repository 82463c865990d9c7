"""Builds the govllm Serve application from its rendered arguments.

`build_app` is the one entry point for both ways of running: `govllm serve`
calls it in-process, and the KubeRay RayService names it as the application's
`import_path` with the same arguments in `serveConfigV2`. The arguments are
what `govllm render serve-config` writes: the router's ServingConfig and one
Ray Serve LLM `LLMConfig` per model, both derived from the cluster spec.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from serving.config import APP_IMPORT_PATH, ServingConfig
from serving.llm_server import DataPlaneLLMServer
from serving.logs import serve_logging_config
from serving.registry import EndpointRegistry
from serving.router.deployment import Router

IMPORT_PATH = APP_IMPORT_PATH
MODEL_DEPLOYMENT_PREFIX = "model:"
ROUTER_DEPLOYMENT = "router"


def model_deployment_name(model_id: str) -> str:
    """Deployment name Ray Serve LLM derives for a model, with our prefix."""
    return MODEL_DEPLOYMENT_PREFIX + model_id.replace("/", "--").replace(".", "_")


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application: router -> (registry, one LLM deployment per model).

    Args:
        args: ``{"serving": ServingConfig dict, "llm_configs": [LLMConfig dict, ...]}``.

    Returns:
        The application whose ingress is the router.
    """
    config = ServingConfig.model_validate(args["serving"])
    llm_configs = [LLMConfig.model_validate(c) for c in args["llm_configs"]]
    served = {c.model_id for c in llm_configs}
    routed = {m.id for m in config.models if m.endpoint is None}  # vendor models have no deployment
    if served != routed:
        raise ValueError(
            f"router models {sorted(routed)} and LLM configs {sorted(served)} must match"
        )
    logs = serve_logging_config(config.router.log_encoding)
    registry = EndpointRegistry.options(logging_config=logs).bind()
    models = {
        c.model_id: build_llm_deployment(
            c,
            name_prefix=MODEL_DEPLOYMENT_PREFIX,
            deployment_cls=DataPlaneLLMServer,
            bind_kwargs={"registry": registry, "data_plane_host": config.router.data_plane_host,
                         "data_plane_token_env": config.router.data_plane_token_env,
                         "engine_stall_s": config.router.engine_stall_s},
            override_serve_options={"logging_config": logs},
        )
        for c in llm_configs
    }
    r = config.router
    router = serve.deployment(
        Router,
        name=ROUTER_DEPLOYMENT,
        max_ongoing_requests=r.max_ongoing_requests,
        autoscaling_config={
            "min_replicas": r.min_replicas,
            "max_replicas": r.max_replicas,
            "target_ongoing_requests": r.target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": 0},
        health_check_period_s=5,
        logging_config=logs,
    )
    return router.bind(config=config.model_dump(mode="json"), registry=registry, models=models)
