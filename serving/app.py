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

from serving import deployment_names
from serving.app_args import AppArgs
from serving.llm_server import DataPlaneLLMServer
from serving.logs import serve_logging_config
from serving.registry import EndpointRegistry
from serving.router.deployment import Router


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """The Serve application: router -> (registry, one LLM deployment per model).

    Args:
        args: the rendered `AppArgs` (`govllm serve`) or its dict form (a Serve config's
            `args`, as KubeRay passes them).

    Returns:
        The application whose ingress is the router.
    """
    app_args = AppArgs.model_validate(args)
    config = app_args.serving
    llm_configs = [LLMConfig.model_validate(c) for c in app_args.llm_configs]
    served = {c.model_id for c in llm_configs}
    routed = {m.id for m in config.models if m.endpoint is None}  # vendor models have no deployment
    if served != routed:
        raise ValueError(
            f"router models {sorted(routed)} and LLM configs {sorted(served)} must match"
        )
    logs = serve_logging_config(config.router.log_encoding)
    registry = EndpointRegistry.options(name=deployment_names.REGISTRY, logging_config=logs).bind()
    models = {
        c.model_id: build_llm_deployment(
            c,
            name_prefix=deployment_names.MODEL_PREFIX,
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
        name=deployment_names.ROUTER,
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
