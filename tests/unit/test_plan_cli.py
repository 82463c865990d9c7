"""`govllm plan`: output, JSON keys and exit status (0 fits, 2 does not, 1 bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from govllm.cli.main import app

EXAMPLE = Path(__file__).resolve().parents[2] / "cluster" / "specs" / "gov-cloud-example.yaml"
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["plan", *args])


def test_fits_exit_zero_with_json():
    result = run("--model", "llama-3.1-elyza-jp-70b", "--gpu", "h100-80gb", "--max-model-len", "16384",
                 "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # 65.7 GiB of bf16 weights per GPU at TP 2 leave ~4 GiB: 27k tokens, one 16k sequence fits
    assert data["fits"] and data["tensor_parallel_size"] == 2 and data["gpus_per_replica"] == 2
    assert data["engine_kwargs"]["tensor_parallel_size"] == 2


def test_table_output():
    result = run("--model", "cohere-command-r-08-2024", "--gpu", "a100-40gb", "--quantization", "fp8",
                 "--max-model-len", "8192")
    assert result.exit_code == 0, result.output
    assert "KV capacity" in result.stdout and "weight-only" in result.stdout


def test_does_not_fit_exit_two_with_reasons_on_stderr():
    result = run("--model", "llama-3.1-70b", "--gpu", "a100-40gb", "--tensor-parallel-size", "1", "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert not data["fits"] and data["alternatives"]
    assert "does not fit" in result.stderr and "a100-40gb" in result.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "gpt-5", "--gpu", "h100-80gb"], "catalog models: tsuzumi-2"),
        (["--model", "llama-3.1-8b", "--gpu", "h100"], "GPU classes: a100-40gb"),
        (["--model", "llama-3.1-8b", "--gpu", "h100-80gb", "--quantization", "int3"], "bf16, fp16"),
        (["--model", "tsuzumi-2", "--gpu", "a100-40gb"], "--hf-config"),
        (["--model", "plamo-2-1b", "--gpu", "l4-24gb"], "--max-model-len"),
        (["--model", "llama-3.1-8b"], "--gpu is required"),
    ],
)
def test_bad_input_exit_one(args, words):
    result = run(*args)
    assert result.exit_code == 1 and words in result.stderr, result.output


def test_hf_config_with_params(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 14336, "max_position_embeddings": 8192, "num_attention_heads": 32,
              "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "torch_dtype": "bfloat16"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = run("--hf-config", str(path), "--params", "8.03", "--gpu", "l4-24gb", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["params"] == 8_030_000_000 and data["kv_cache_bytes_per_token"] == 32 * 8 * 128 * 4
    assert data["max_model_len"] == 8192


def test_catalog_model_with_delivered_config(tmp_path):
    """An unknown catalog shape planned from the config.json the vendor delivered."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 6144,
              "intermediate_size": 16384, "max_position_embeddings": 32768, "num_attention_heads": 48,
              "num_hidden_layers": 60, "num_key_value_heads": 8, "vocab_size": 120000}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run("--model", "tsuzumi-2", "--hf-config", str(tmp_path / "config.json"), "--gpu",
                 "a100-40gb", "--quantization", "fp8", "--max-model-len", "8192", "--json")
    data = json.loads(result.stdout)
    assert data["params"] == 30_000_000_000  # the catalog's figure, since no weights were given
    assert result.exit_code in (0, 2) and data["model"] == "tsuzumi-2"


def test_spec_plan_prints_gpus_per_class():
    result = run("--spec", str(EXAMPLE), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["gpus_per_class"]) == {"h100-80gb", "l40s-48gb", "a100-40gb"}
    for totals in data["gpus_per_class"].values():
        assert 1 <= totals["min"] <= totals["max"]
    table = run("--spec", str(EXAMPLE))
    assert "GPUs per class" in table.stdout and "h100-80gb" in table.stdout


def test_cpu_spec_shows_bounds_and_derived_autoscaling_targets():
    """CPU specs are sized as written; the target is the planner's (80 % of max_ongoing)."""
    from cluster.sizing.throughput import autoscaling_target
    from cluster.spec.schema import load_spec

    path = EXAMPLE.parent / "local-scaling.yaml"
    spec, _ = load_spec(path)
    result = run("--spec", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [m["model_id"] for m in data["models"]] == [m.id for m in spec.self_hosted()]
    for shown, model in zip(data["models"], spec.self_hosted(), strict=True):
        assert shown["target_ongoing_requests"] == autoscaling_target(model.replicas.max_ongoing_requests)
        assert (shown["min_replicas"], shown["max_replicas"]) == (model.replicas.min, model.replicas.max)
        assert shown["on_demand"] == (model.replicas.min == 0)
    assert data["autoscaling"] == spec.autoscaling.serve_options()
    table = run("--spec", str(path))
    assert "autoscaling target" in table.stdout and "tiny-qwen2-ja" in table.stdout


def test_spec_plan_reports_vendor_endpoints_as_not_sized():
    """Vendor-hosted models get no GPUs and no sizing; their contract is their capacity."""
    from cluster.spec.schema import load_spec

    spec, _ = load_spec(EXAMPLE)
    vendors = spec.endpoints()
    assert vendors, "the example spec declares vendor endpoints"
    result = run("--spec", str(EXAMPLE), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {m["model"] for m in data["models"]} == {m.id for m in spec.self_hosted()}
    assert [e["model"] for e in data["endpoints"]] == [m.id for m in vendors]
    for e, m in zip(data["endpoints"], vendors, strict=True):
        limits = m.source.endpoint.limits
        assert e == {"model": m.id, "sized": False, "provider": m.source.endpoint.terms.provider,
                     "max_concurrency": limits.max_concurrency,
                     "requests_per_minute": limits.requests_per_minute,
                     "tokens_per_minute": limits.tokens_per_minute,
                     "max_confidentiality": m.max_confidentiality}
    table = runner.invoke(app, ["plan", "--spec", str(EXAMPLE)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    section = table.stdout.split("Endpoints (not sized")[1]
    for m in vendors:
        row = next(line for line in section.splitlines() if f" {m.id} " in line)
        limits = m.source.endpoint.limits
        assert m.source.endpoint.terms.provider in row and f" {limits.max_concurrency} " in row
        rpm = limits.requests_per_minute
        assert (f" {rpm:,} " if rpm else " - ") in row
    assert "GPUs per class" in table.stdout.split("Endpoints (not sized")[0]
