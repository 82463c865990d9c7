"""Cluster spec validation: bad specs fail with messages that name the field."""

from __future__ import annotations

import copy

import pytest
import yaml

from cluster.render.serve_config import app_args, serve_config_file
from cluster.spec.schema import DEFAULT_SPEC_PATH, SpecError, load_spec, parse_spec

BASE = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())


def spec_with(**changes):
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split("__")
        for part in path:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return data


def error_of(data) -> str:
    with pytest.raises(SpecError) as exc:
        parse_spec(data, source="test.yaml")
    return str(exc.value)


def test_default_spec_is_valid_and_has_two_families():
    spec, _ = load_spec()
    families = {m.family for m in spec.models}
    assert len(spec.models) >= 2 and len(families) >= 2
    assert spec.router.port == 8000 and spec.router.host == "127.0.0.1"
    assert spec.auth.enabled


@pytest.mark.parametrize(
    "changes, field, words",
    [
        ({"models__0__max_model_len": -1}, "models.0.max_model_len", "greater than 0"),
        ({"models__0__max_model_len": "long"}, "models.0.max_model_len", "integer"),
        ({"router__port": 70000}, "router.port", "less than or equal"),
        ({"router__max_body_bytes": 10}, "router.max_body_bytes", "greater than or equal"),
        ({"models__0__source": {}}, "models.0.source", "exactly one"),
        ({"models__0__source": {"path": "/x", "uri": "s3://b/k"}}, "models.0.source", "exactly one"),
        ({"models__0__source__dev_model": {"family": "gpt5"}}, "models.0.source.dev_model.family", "unknown"),
        ({"models__0__id": "bad id!"}, "models.0.id", "pattern"),
        ({"models__0__replicas": {"min": 3, "max": 1}}, "models.0.replicas", "must be >="),
        ({"models__0__replicas": {"min": -1, "max": 1}}, "models.0.replicas.min", "greater than or equal to 0"),
        ({"models__0__replicas": {"target_ongoing_requests": 8}}, "models.0.replicas", "no longer set by hand"),
        ({"models__0__engine_kwargs": {"max_model_len": 9}}, "models.0.engine_kwargs", "models[].max_model_len"),
        ({"engine__engine_kwargs": {"tensor_parallel_size": 2}}, "engine.engine_kwargs", "sizing planner"),
        ({"engine__device": "tpu"}, "engine.device", "'cpu' or 'gpu'"),
        ({"router__unknown_knob": 1}, "router.unknown_knob", "Extra inputs are not permitted"),
        ({"name": "Has_Upper"}, "name", "pattern"),
    ],
)
def test_bad_values_name_the_field(changes, field, words):
    message = error_of(spec_with(**changes))
    assert f"  {field}:" in message, message
    assert words in message, message


def test_duplicate_model_ids_rejected():
    data = spec_with()
    data["models"][1]["id"] = data["models"][0]["id"]
    assert "duplicate id" in error_of(data)


def test_alias_to_unknown_model_rejected():
    assert "unknown model" in error_of(spec_with(aliases={"default": ["nope"]}))


def test_alias_clashing_with_model_id_rejected():
    data = spec_with()
    data["aliases"] = {data["models"][1]["id"]: [data["models"][0]["id"]]}
    assert "is also a model id" in error_of(data)


def test_alias_declared_twice_rejected():
    data = spec_with(aliases={"llama": ["tiny-qwen2-ja"]})
    assert "declared twice" in error_of(data)


def test_non_mapping_and_bad_yaml(tmp_path):
    assert "YAML mapping" in error_of(["a", "b"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_render_cpu_default(tmp_path):
    spec, spec_dir = load_spec()
    args = app_args(spec, spec_dir).to_config()
    assert [m["id"] for m in args["serving"]["models"]] == [m.id for m in spec.models]
    assert args["serving"]["aliases"]["default"] == ["tiny-llama-ja", "tiny-qwen2-ja"]
    assert args["serving"]["aliases"]["llama"] == ["tiny-llama-ja"]
    for cfg, model in zip(args["llm_configs"], spec.models, strict=True):
        assert cfg["model_loading_config"]["model_id"] == model.id
        assert cfg["engine_kwargs"]["dtype"] == "float32"  # bfloat16 dies with SIGILL on these CPUs
        assert cfg["engine_kwargs"]["max_model_len"] == model.max_model_len
        assert cfg["accelerator_type"] is None
        assert cfg["placement_group_config"] == {"bundles": [{"CPU": spec.engine.cpus_per_replica}]}
        scaling = cfg["deployment_config"]["autoscaling_config"]
        assert scaling["policy"]["policy_function"] == "serving.autoscaling:data_plane_policy"
        assert scaling["min_replicas"] == model.replicas.min
    app = serve_config_file(spec, spec_dir)["applications"][0]
    assert app["import_path"] == "serving.app:build_app" and app["args"] == args


def test_rendered_llm_configs_are_valid_ray_llm_configs():
    from ray.serve.llm import LLMConfig

    from serving.config import ServingConfig

    spec, spec_dir = load_spec()
    args = app_args(spec, spec_dir).to_config()
    ServingConfig.model_validate(args["serving"])
    for cfg in args["llm_configs"]:
        assert LLMConfig.model_validate(cfg).model_id


def test_cpu_engine_thread_binding_is_rendered_from_the_spec():
    """The engine's OpenMP cores reach every CPU model's replicas as vLLM's own variable;
    `auto` leaves vLLM's default alone, and a malformed list is refused at parse time."""
    spec, spec_dir = parse_spec(spec_with(engine__cpu_omp_threads_bind="0"), source="t.yaml"), DEFAULT_SPEC_PATH.parent
    for cfg in app_args(spec, spec_dir).to_config()["llm_configs"]:
        assert cfg["runtime_env"]["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    default, _ = load_spec()
    for cfg in app_args(default, spec_dir).to_config()["llm_configs"]:
        assert "VLLM_CPU_OMP_THREADS_BIND" not in cfg["runtime_env"]["env_vars"]
    assert "cpu_omp_threads_bind" in error_of(spec_with(engine__cpu_omp_threads_bind="core 0"))
