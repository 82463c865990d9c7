"""`govllm plan`: one model on one GPU class, or a whole cluster spec.

Exit status: 0 when the plan fits, 2 when it does not (reasons on stderr),
1 for bad input (unknown model or GPU: the message lists the valid names).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from cluster.catalog.cards import CatalogError
from cluster.sizing.cluster_plan import plan_cluster
from cluster.sizing.cpu_plan import plan_cpu_models
from cluster.sizing.inputs import PlanningError, request_for
from cluster.sizing.planner import plan
from cluster.spec.schema import SpecError, load_spec
from govllm.cli.plan_report import cpu_plan_json, print_cluster, print_cpu_plan, print_plan

FITS, BAD_INPUT, DOES_NOT_FIT = 0, 1, 2


def _console() -> Console:
    # rich falls back to 80 columns when piped; the tables need more to stay readable
    return Console() if sys.stdout.isatty() else Console(width=160)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return BAD_INPUT


def run_plan(*, model: str | None, gpu: str | None, quantization: str, kv_cache_dtype: str,
             max_model_len: int | None, concurrency: int | None,
             gpu_memory_utilization: float | None, tensor_parallel_size: int | None,
             gpus_per_node: int | None, hf_config: Path | None, params: float | None,
             spec: Path | None, as_json: bool) -> int:
    if spec is not None:
        if model or hf_config or gpu:
            return _fail("--spec plans the spec's models; drop --model/--hf-config/--gpu")
        return _run_spec(spec, as_json)
    if gpu is None:
        return _fail("--gpu is required with --model or --hf-config")
    try:
        request = request_for(
            gpu_id=gpu, model_id=model, hf_config=hf_config, params_billion=params,
            quantization=quantization, kv_cache_dtype=kv_cache_dtype, max_model_len=max_model_len,
            concurrency=concurrency, gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, gpus_per_node=gpus_per_node,
        )
    except (CatalogError, PlanningError) as exc:
        return _fail(str(exc))
    result = plan(request)
    return _emit(as_json, result.to_json, lambda: print_plan(result, _console()), result.reasons)


def _run_spec(path: Path, as_json: bool) -> int:
    try:
        cluster_spec, spec_dir = load_spec(path)
        if cluster_spec.engine.device == "cpu":  # sized as written: bounds and scaling targets
            plans = plan_cpu_models(cluster_spec)
            return _emit(as_json, lambda: cpu_plan_json(cluster_spec, plans),
                         lambda: print_cpu_plan(cluster_spec, plans, _console()), [])
        cluster = plan_cluster(cluster_spec, spec_dir)
    except (SpecError, CatalogError, PlanningError) as exc:
        return _fail(str(exc))
    return _emit(as_json, cluster.to_json, lambda: print_cluster(cluster, _console()),
                 cluster.problems)


def _emit(as_json: bool, to_json: Callable[[], dict], print_table: Callable[[], None],
          refusals: list[str]) -> int:
    """The plan on stdout (JSON or tables), refusals on stderr, and the exit status."""
    if as_json:
        print(json.dumps(to_json(), indent=2))
    else:
        print_table()
    for refusal in refusals:
        print(f"does not fit: {refusal}", file=sys.stderr)
    return DOES_NOT_FIT if refusals else FITS


def plan_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model id."),
    gpu: str | None = typer.Option(None, "--gpu", "-g", help="GPU class id (a100-40gb, h100-80gb, ...)."),
    quantization: str = typer.Option("bf16", help="Weights: bf16, fp16, fp8, int8, awq, gptq."),
    kv_cache_dtype: str = typer.Option("auto", help="KV cache: auto (model dtype) or fp8."),
    max_model_len: int | None = typer.Option(None, min=1, help="Default: the model's context length."),
    concurrency: int | None = typer.Option(
        None, min=1, help="Sequences of max_model_len one replica must hold at once."
    ),
    gpu_memory_utilization: float | None = typer.Option(
        None, min=0.01, max=1.0, help="Default: vLLM 0.32's 0.92."
    ),
    tensor_parallel_size: int | None = typer.Option(
        None, min=1, help="Evaluate this degree instead of choosing the smallest that fits."
    ),
    gpus_per_node: int | None = typer.Option(None, min=1, help="Default: the largest instance type."),
    hf_config: Path | None = typer.Option(
        None, help="config.json or checkpoint directory to size instead of (or with) a catalog model."
    ),
    params: float | None = typer.Option(None, min=0.0, help="Parameter count in billions."),
    spec: Path | None = typer.Option(None, "--spec", "-s", help="Plan every model of a cluster spec."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """Size a model on a GPU class: TP/PP, KV-cache capacity, vLLM settings, fits or not.

    Exit status: 0 fits, 2 does not fit (reasons on stderr), 1 bad input.
    """
    raise typer.Exit(run_plan(
        model=model, gpu=gpu, quantization=quantization, kv_cache_dtype=kv_cache_dtype,
        max_model_len=max_model_len, concurrency=concurrency,
        gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
        gpus_per_node=gpus_per_node, hf_config=hf_config, params=params, spec=spec, as_json=as_json,
    ))


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
