"""Every seam of Ray Serve (LLM) govllm relies on, checked against the installed Ray.

Ray 2.60's own `llm` extra pins vLLM 0.29; govllm runs it with vLLM 0.32 (docs/dependencies.md),
a pairing nothing upstream tests. A bump of either must fail here, loudly and by name, rather
than in a replica at start-up. The integration suite then runs the real thing.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module, names", [
    ("ray.serve", ["deployment", "ingress", "get_replica_context", "start", "run", "status"]),
    ("ray.serve.llm", ["LLMConfig", "build_llm_deployment"]),
    ("ray.serve.llm.deployment", ["LLMServer"]),
    ("ray.serve.deployment", ["Application"]),
    ("ray.serve.schema", ["LoggingConfig", "ServeStatus"]),
    ("ray.serve._private.logging_utils", ["configure_component_logger"]),
    ("ray.llm._internal.serve.engines.vllm.vllm_engine", ["VLLMEngine"]),
])
def test_import_paths(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module} lost {missing}"


def test_llm_server_hooks_govllm_overrides():
    """serving/llm_server.py subclasses LLMServer: the hooks it overrides and calls exist."""
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from ray.serve.llm.deployment import LLMServer

    from serving.llm_server import DataPlaneLLMServer

    assert issubclass(DataPlaneLLMServer, LLMServer)
    for hook in ("__init__", "check_health", "__del__"):
        assert inspect.iscoroutinefunction(getattr(LLMServer, hook)), f"LLMServer.{hook} is no longer async"
    init = inspect.signature(LLMServer.__init__).parameters
    assert "llm_config" in init and list(init)[1] == "llm_config"
    # what DataPlaneLLMServer reaches through self.engine
    assert inspect.iscoroutinefunction(VLLMEngine.build_asgi_app)
    assert inspect.iscoroutinefunction(VLLMEngine.check_health)
    # Serve calls a deployment's record_autoscaling_stats by this name (custom metrics)
    replica_src = inspect.getsource(importlib.import_module("ray.serve._private.replica"))
    assert '"record_autoscaling_stats"' in replica_src
    assert callable(DataPlaneLLMServer.record_autoscaling_stats)


def test_llm_configs_govllm_renders_are_valid_and_every_key_is_a_field():
    from ray.serve.llm import LLMConfig

    from cluster.render.serve_config import app_args
    from cluster.spec.schema import load_spec

    spec, spec_dir = load_spec(None)
    args = app_args(spec, spec_dir).to_config()
    assert args["llm_configs"]
    for raw in args["llm_configs"]:
        config = LLMConfig.model_validate(raw)
        unknown = set(raw) - set(type(config).model_fields)
        assert not unknown, f"LLMConfig has no field(s) {unknown}"
        assert config.model_id == raw["model_loading_config"]["model_id"]
        assert set(raw["deployment_config"]["autoscaling_config"]) <= {
            "min_replicas", "initial_replicas", "max_replicas", "target_ongoing_requests", "policy"}


class _NoClusterRuntimeContext:
    """Stand-in for `ray.get_runtime_context()` of a driver without a job runtime env.

    build_llm_deployment reads the driver's runtime env, which would start a whole local Ray
    cluster inside a unit test; the integration suite runs the real call on every run.
    """

    @property
    def runtime_env(self) -> dict:
        return {}  # build_llm_deployment adds its setup hook to it


def test_build_app_binds_every_deployment_with_json_logging(monkeypatch):
    """serving/app.py: build_llm_deployment's keywords, LoggingConfig, the ingress."""
    import ray
    from ray.serve.llm import build_llm_deployment

    monkeypatch.setattr(ray, "get_runtime_context", lambda: _NoClusterRuntimeContext())

    from cluster.render.serve_config import app_args
    from cluster.spec.schema import load_spec
    from serving.app import build_app

    params = inspect.signature(build_llm_deployment).parameters
    for keyword in ("name_prefix", "deployment_cls", "bind_kwargs", "override_serve_options"):
        assert keyword in params, f"build_llm_deployment lost {keyword}"
    spec, spec_dir = load_spec(None)
    app = build_app(app_args(spec, spec_dir))
    deployments = {}
    pending = [app]
    while pending:  # the bound graph: router -> registry, one deployment per model
        node = pending.pop()
        dep = node._bound_deployment
        deployments[dep.name] = dep
        pending += [a for a in [*dep.init_args, *dep.init_kwargs.values()] if hasattr(a, "_bound_deployment")]
        pending += [a for a in (dep.init_kwargs.get("models") or {}).values() if hasattr(a, "_bound_deployment")]
    from serving import deployment_names

    assert {deployment_names.ROUTER, deployment_names.REGISTRY} <= set(deployments)
    assert {deployment_names.model_deployment(m.id) for m in spec.self_hosted()} <= set(deployments)
    for name, dep in deployments.items():
        assert dep.logging_config["encoding"] == "JSON", name


def test_serve_environment_variables_govllm_sets_are_read_by_ray():
    """serving/serve_env.py and govllm/runtime_env.py set RAY_SERVE_* variables; each must
    still be one Ray reads."""
    import re

    text = (ROOT / "serving" / "serve_env.py").read_text() + (ROOT / "govllm" / "runtime_env.py").read_text()
    names = sorted(set(re.findall(r'"(RAY_SERVE_[A-Z0-9_]+)"', text)))
    assert len(names) >= 5
    ray_sources = "".join(inspect.getsource(importlib.import_module(m)) for m in (
        "ray.serve._private.constants", "ray.serve._private.haproxy"))
    unread = [n for n in names if f'"{n}"' not in ray_sources]
    assert not unread, f"Ray no longer reads {unread}"


def test_serve_log_constants_govllm_mirrors():
    from ray._common.logging_constants import LOGGER_FLATTEN_KEYS
    from ray.serve._private.constants import SERVE_LOG_EXTRA_FIELDS, SERVE_LOGGER_NAME

    from serving.logs import EXTRA_FIELDS, SERVE_LOGGER

    assert SERVE_LOGGER == SERVE_LOGGER_NAME and EXTRA_FIELDS == SERVE_LOG_EXTRA_FIELDS
    assert EXTRA_FIELDS in LOGGER_FLATTEN_KEYS  # flattened into top-level JSON keys


def test_every_vllm_name_ray_serve_llm_imports_exists_in_the_pinned_vllm():
    """Ray 2.60's vLLM engine was written against vLLM 0.29 (its `llm` extra's pin); each
    `from vllm... import name` in it, lazy ones and type-only ones included, must resolve in
    the vLLM govllm installs (0.32), or the engine fails at replica start."""
    import ast

    engine = importlib.import_module("ray.llm._internal.serve.engines.vllm.vllm_engine")
    tree = ast.parse(inspect.getsource(engine))
    wanted = sorted({(node.module, alias.name) for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module
                     and node.module.split(".")[0] == "vllm" for alias in node.names})
    assert len(wanted) >= 10
    missing = [f"{module}.{name}" for module, name in wanted if not _defines(module, name)]
    assert not missing, f"vLLM lacks what Ray Serve LLM imports: {missing}"


def _defines(module: str, name: str) -> bool:
    """Whether `module` defines or imports `name`, read from its source (importing vLLM's
    server modules takes a minute on a small machine; reading them takes milliseconds)."""
    import ast
    from importlib.util import find_spec

    parts = module.split(".")
    root = find_spec(parts[0])
    path = Path(root.submodule_search_locations[0]).joinpath(*parts[1:])
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not source.is_file():
        return False
    if path.is_dir() and ((path / name).is_dir() or (path / f"{name}.py").is_file()):
        return True  # a submodule
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any(
                (a.asname or a.name.split(".")[0]) == name for a in node.names):
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def test_model_deployment_names_mirror_ray_serve_llm():
    """serving/deployment_names.py mangles model ids as Ray Serve LLM's builder does."""
    from ray.llm._internal.serve.core.server.builder import _get_deployment_name
    from ray.serve.llm import LLMConfig

    from serving.deployment_names import mangle_model_id

    for model_id in ("elyza/Llama-3-ELYZA-JP-70B", "sarashina2.2-3b", "plain"):
        config = LLMConfig(model_loading_config={"model_id": model_id, "model_source": "/nonexistent"})
        assert mangle_model_id(model_id) == _get_deployment_name(config)
