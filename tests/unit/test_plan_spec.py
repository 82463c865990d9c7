"""GPU cluster specs: validation, the cluster plan, and the Serve config it renders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster.render.serve_config import app_args
from cluster.sizing.cluster_plan import plan_cluster
from cluster.sizing.inputs import PlanDoesNotFit, PlanningError
from cluster.spec.schema import DEFAULT_SPEC_PATH, SpecError, load_spec, parse_spec
from govllm.cli.main import app

EXAMPLE = Path(__file__).resolve().parents[2] / "cluster" / "specs" / "gov-cloud-example.yaml"
BASE = yaml.safe_load(EXAMPLE.read_text())


def example(**edits):
    data = copy.deepcopy(BASE)
    for key, value in edits.items():
        data[key] = value
    return data


def parsed(data):
    return parse_spec(data, source="test.yaml")


def error_of(data) -> str:
    with pytest.raises(SpecError) as exc:
        parsed(data)
    return str(exc.value)


def test_example_renders_planned_llm_configs():
    spec, spec_dir = load_spec(EXAMPLE)
    cluster = plan_cluster(spec, spec_dir)
    args = app_args(spec, spec_dir).to_config()
    for cfg, model in zip(args["llm_configs"], spec.self_hosted(), strict=True):  # vendors: no engine
        planned = cluster.get(model.id)
        sizing = planned.sizing
        kwargs = cfg["engine_kwargs"]
        assert kwargs["tensor_parallel_size"] == sizing.tensor_parallel_size
        assert kwargs["pipeline_parallel_size"] == sizing.pipeline_parallel_size
        assert kwargs["gpu_memory_utilization"] == 0.92
        assert kwargs["max_model_len"] == model.max_model_len
        assert kwargs["max_num_seqs"] == sizing.max_num_seqs
        assert kwargs["kv_cache_dtype"] == model.sizing.kv_cache_dtype
        assert ("quantization" in kwargs) == (model.sizing.quantization != "bf16")
        assert cfg["accelerator_type"] == sizing.request.gpu.ray_accelerator_type
        bundles = cfg["placement_group_config"]["bundles"]
        assert len(bundles) == sizing.gpus_per_replica and all(b["GPU"] == 1 for b in bundles)
        scaling = cfg["deployment_config"]["autoscaling_config"]
        assert scaling["min_replicas"] == planned.bounds.min_replicas
        assert scaling["max_replicas"] == planned.bounds.max_replicas
        assert scaling["target_ongoing_requests"] == sizing.target_ongoing_requests
        assert scaling["policy"]["policy_function"] == "serving.autoscaling:data_plane_policy"
        assert cfg["runtime_env"] is None  # no VLLM_CPU_KVCACHE_SPACE on GPUs
    elyza = args["llm_configs"][0]["engine_kwargs"]
    assert elyza["quantization"] == "fp8" and elyza["tensor_parallel_size"] == 2


def test_example_configs_are_valid_ray_llm_configs():
    from ray.serve.llm import LLMConfig

    spec, spec_dir = load_spec(EXAMPLE)
    for cfg in app_args(spec, spec_dir).to_config()["llm_configs"]:
        config = LLMConfig.model_validate(cfg)
        assert config.accelerator_type and config.placement_group_config["strategy"] == "STRICT_PACK"


def test_render_serve_config_command(tmp_path):
    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(app, ["render", "serve-config", "--spec", str(EXAMPLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rendered = yaml.safe_load(out.read_text())["applications"][0]["args"]["llm_configs"]
    engines = [m["id"] for m in BASE["models"] if "endpoint" not in m["source"]]
    assert len(engines) < len(BASE["models"])  # the example's vendor endpoints get no engine
    assert [c["model_loading_config"]["model_id"] for c in rendered] == engines


def test_cpu_default_is_untouched_by_sizing():
    spec, spec_dir = load_spec(DEFAULT_SPEC_PATH)
    for cfg, model in zip(app_args(spec, spec_dir).to_config()["llm_configs"], spec.self_hosted(), strict=True):
        assert "tensor_parallel_size" not in cfg["engine_kwargs"]
        assert cfg["deployment_config"]["autoscaling_config"]["max_replicas"] == model.replicas.max


def test_replica_bounds_follow_the_load():
    spec, spec_dir = load_spec(EXAMPLE)
    base = plan_cluster(spec, spec_dir)
    busier = parsed(example(load={**BASE["load"], "users": BASE["load"]["users"] * 4}))
    doubled = plan_cluster(busier, spec_dir)
    for a, b in zip(base.models, doubled.models, strict=True):
        assert b.bounds.max_replicas >= a.bounds.max_replicas
        assert b.sizing.tensor_parallel_size == a.sizing.tensor_parallel_size  # load never resizes a replica
    assert sum(m.gpus_at_max for m in doubled.models) > sum(m.gpus_at_max for m in base.models)
    # shares: 0.5 + 0.2 + 0.1 given, the unset model gets the remaining 0.2
    assert [round(m.traffic_share, 6) for m in base.models] == [0.5, 0.2, 0.1, 0.2]


def test_pool_capacity_is_enforced(tmp_path):
    pools = copy.deepcopy(BASE["gpu_pools"])
    pools[0]["max_gpus"] = 2
    spec = parsed(example(gpu_pools=pools))
    cluster = plan_cluster(spec, EXAMPLE.parent)
    assert not cluster.fits and "gpu_pools[h100-80gb]" in cluster.problems[0]
    with pytest.raises(PlanDoesNotFit, match="pool allows 2"):
        app_args(spec, EXAMPLE.parent).to_config()
    path = tmp_path / "small-pool.yaml"
    path.write_text(yaml.safe_dump(example(gpu_pools=pools)))
    result = CliRunner().invoke(app, ["plan", "--spec", str(path)])
    assert result.exit_code == 2 and "pool allows 2" in result.stderr
    render = CliRunner().invoke(app, ["render", "serve-config", "--spec", str(path)])
    assert render.exit_code == 2 and "pool allows 2" in render.stderr


def test_unknown_catalog_values_need_operator_input(tmp_path):
    models = copy.deepcopy(BASE["models"])
    models.append({"id": "tsuzumi-2", "source": {"uri": "s3://b/t2/"}, "max_model_len": 8192,
                   "sizing": {"catalog": "tsuzumi-2", "gpu": "a100-40gb", "quantization": "fp8"}})
    spec = parsed(example(models=models))
    with pytest.raises(PlanningError, match="tsuzumi 2 has unknown .*sizing.hf_config"):
        plan_cluster(spec, tmp_path)
    # the delivered config.json completes it (values here are a test fixture, not tsuzumi's)
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 6144,
        "intermediate_size": 16384, "num_attention_heads": 48, "num_hidden_layers": 60,
        "num_key_value_heads": 8, "vocab_size": 120000, "max_position_embeddings": 32768}))
    models[-1]["sizing"]["hf_config"] = "config.json"
    planned = plan_cluster(parsed(example(models=models)), tmp_path).get("tsuzumi-2")
    assert planned.sizing.request.params == 30_000_000_000
    assert planned.sizing.request.shape.num_layers == 60


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d.pop("load"), "needs a load section"),
        (lambda d: d["models"][0].pop("sizing"), "models[elyza-jp-70b].sizing is required"),
        (lambda d: d["models"][0].update(replicas={"min": 1, "max": 3}), "come from the sizing planner"),
        (lambda d: d["models"][0]["sizing"].update(gpu="h200-141gb"), "has no gpu_pools entry"),
        (lambda d: d["models"][0]["sizing"].update(gpu="b200"), "GPU classes: a100-40gb"),
        (lambda d: d["models"][0]["sizing"].update(catalog="gpt-5"), "catalog models: tsuzumi-2"),
        (lambda d: d["models"][0]["sizing"].pop("catalog"), "sizing.catalog"),
        (lambda d: d["models"][0]["sizing"].update(quantization="int3"), "models.0.sizing.quantization"),
        (lambda d: d["models"][0].update(engine_kwargs={"max_num_seqs": 8}), "set by the sizing planner"),
        (lambda d: d["engine"].update(engine_kwargs={"gpu_memory_utilization": 0.8}), "set by the sizing planner"),
        (lambda d: d["models"][0].update(engine_kwargs={"tensor_parallel_size": 2}), "sizing planner"),
        (lambda d: d["models"][1]["sizing"].update(traffic_share=0.9), "add up to"),
        (lambda d: d["gpu_pools"].append({"gpu": "h100-80gb"}), "one pool per GPU class"),
        (lambda d: d["engine"].update(device="cpu"), "sizing applies to engine.device gpu"),
    ],
)
def test_gpu_spec_errors_name_the_field(edit, words):
    data = example()
    edit(data)
    assert words in error_of(data)
