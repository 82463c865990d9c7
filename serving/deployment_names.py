"""The names of the application's Serve deployments: one owner for every reader.

`serving.app.build_app` names the deployments; `govllm status` (the local run) and
`govllm status --context` (cluster/ops/rayservice_status.py, reading KubeRay's status) look
them up by the same names. Ray Serve LLM derives a model deployment's name from the model
id (ray.llm._internal.serve.core.server.builder._get_deployment_name); `model_deployment`
mirrors it and tests/unit/test_ray_serve_seams.py checks the two agree.
"""

from __future__ import annotations

#: Prefix of every model deployment (`build_llm_deployment(name_prefix=...)`).
MODEL_PREFIX = "model:"
#: The ingress deployment: the router replicas HAProxy sends requests to.
ROUTER = "router"
#: The endpoint registry every router and model replica talks to.
REGISTRY = "EndpointRegistry"


def mangle_model_id(model_id: str) -> str:
    """What Ray Serve LLM makes of a model id in a deployment name ("/" and "." are not allowed)."""
    return model_id.replace("/", "--").replace(".", "_")


def model_deployment(model_id: str) -> str:
    """The Serve deployment that runs `model_id`'s engine replicas."""
    return MODEL_PREFIX + mangle_model_id(model_id)
