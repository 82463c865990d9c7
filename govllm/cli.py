"""The `govllm` command line."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
import yaml

from cluster.spec import DEFAULT_SPEC_PATH, SpecError, load_spec

app = typer.Typer(
    help=(
        "govllm: serve Japan's domestic LLMs to government staff on Ray Serve LLM + vLLM.\n\n"
        "Everything is driven by one YAML cluster spec; without --spec the embedded local "
        f"default is used ({DEFAULT_SPEC_PATH.name}: two generated tiny models on vLLM-CPU)."
    ),
    no_args_is_help=True,
    # `govllm --install-completion` / `--show-completion` (bash, zsh, fish, PowerShell)
    add_completion=True,
    pretty_exceptions_enable=False,
)
render_app = typer.Typer(help="Write configuration derived from a cluster spec.", no_args_is_help=True)
app.add_typer(render_app, name="render")

#: Environment variables for the options most commands share (docs/operator-guide.md).
SPEC_ENV, CONTEXT_ENV, NAMESPACE_ENV = "GOVLLM_SPEC", "GOVLLM_CONTEXT", "GOVLLM_NAMESPACE"

SpecOption = typer.Option(
    None, "--spec", "-s", envvar=SPEC_ENV,
    help="Cluster spec YAML file. Default: the embedded local spec.",
    exists=False, dir_okay=False,
)


def _load(spec: Path | None):
    try:
        return load_spec(spec)
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@contextmanager
def _planning_errors():
    """GPU specs are sized by the planner: a refusal exits 2, bad planner input exits 1."""
    from cluster.plan_inputs import PlanDoesNotFit, PlanningError

    try:
        yield
    except PlanDoesNotFit as exc:  # see `govllm plan --spec` for the alternatives
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except PlanningError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@app.command()
def serve(
    spec: Path | None = SpecOption,
    host: str | None = typer.Option(None, help="Override router.host of the spec."),
    port: int | None = typer.Option(None, help="Override router.port of the spec."),
    ready_timeout: float = typer.Option(600.0, help="Seconds to wait for every model to be ready."),
) -> None:
    """Run the spec: local Ray, the router and one vLLM deployment per model, until Ctrl-C.

    Generates missing development models, creates the development API key
    (.govllm/dev-api-key, mode 0600) on first start, prints the API address,
    the models and the key, and shuts everything down on SIGINT/SIGTERM.
    """
    cluster_spec, spec_dir = _load(spec)
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if overrides:
        cluster_spec = cluster_spec.model_copy(
            update={"router": cluster_spec.router.model_copy(update=overrides)}
        )
    from govllm.local import serve as run_local

    with _planning_errors():
        code = run_local(cluster_spec, spec_dir, ready_timeout_s=ready_timeout)
    raise typer.Exit(code)


@app.command()
def validate(spec: Path | None = SpecOption) -> None:
    """Check a cluster spec; prints one line per problem and exits 1 if there are any."""
    cluster_spec, _ = _load(spec)
    typer.echo(f"{spec or DEFAULT_SPEC_PATH}: valid ({len(cluster_spec.models)} models)")


def write_output(text: str, output: Path | None) -> None:
    """Generated files go to --output when given, else to stdout (for piping into helm/kubectl).

    UTF-8 always: specs and records carry Japanese text whatever the operator's locale."""
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@render_app.command("serve-config")
def render_serve_config(
    spec: Path | None = SpecOption,
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write; default stdout."),
) -> None:
    """The Ray Serve config (serveConfigV2 shape) that runs the spec's application."""
    from cluster.serve_config import serve_config_file

    cluster_spec, spec_dir = _load(spec)
    with _planning_errors():
        config = serve_config_file(cluster_spec, spec_dir)
    write_output(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), output)


@render_app.command("helm-values")
def render_helm_values(
    spec: Path = typer.Option(..., "--spec", "-s", envvar=SPEC_ENV,
                              help="Cluster spec YAML file (engine.device gpu).", dir_okay=False),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write; default stdout."),
) -> None:
    """Values for the helm/govllm chart: worker groups, GPUs and serveConfigV2 from the planner.

    Use with a cloud profile: helm install govllm helm/govllm -f <this file>
    -f helm/govllm/profiles/<cloud>.yaml. Exit status: 0 written, 2 the plan does not fit,
    1 the spec cannot run on Kubernetes as written (the message names the field).
    """
    from cluster.helm_values import helm_values, render_text

    cluster_spec, spec_dir = _load(spec)
    with _planning_errors():
        text = render_text(helm_values(cluster_spec, spec_dir, source=str(spec)), source=str(spec))
    write_output(text, output)


@app.command("plan")
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
    from cluster.plan_command import run_plan

    raise typer.Exit(run_plan(
        model=model, gpu=gpu, quantization=quantization, kv_cache_dtype=kv_cache_dtype,
        max_model_len=max_model_len, concurrency=concurrency,
        gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
        gpus_per_node=gpus_per_node, hf_config=hf_config, params=params, spec=spec, as_json=as_json,
    ))


@app.command("generate-models")
def generate_models(spec: Path | None = SpecOption) -> None:
    """Create the spec's development models (tokenizer + random weights) if missing."""
    from govllm.local import prepare_models

    cluster_spec, _ = _load(spec)
    prepare_models(cluster_spec)


@app.command()
def status(
    spec: Path | None = SpecOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    context: str | None = typer.Option(
        None, "--context", envvar=CONTEXT_ENV,
        help="Read the RayService from this kubeconfig context instead of the "
        "local run (state, pods, per-model replicas and readiness)."),
    namespace: str = typer.Option("govllm", "--namespace", "-n", envvar=NAMESPACE_ENV,
                                  help="With --context: the namespace."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG",
                                          help="With --context: the kubeconfig file."),
) -> None:
    """Show the running application: models, their replicas' data-plane endpoints, readiness.

    With --context: the Kubernetes deployment (RayService named after the spec).
    """
    from govllm.status import collect

    cluster_spec, spec_dir = _load(spec)
    if context is not None:
        from govllm.cluster_cli import kubernetes_status

        planned: dict[str, tuple[int, int]] = {}
        if cluster_spec.engine.device == "gpu":
            from cluster.cluster_plan import plan_cluster

            with _planning_errors():
                planned = {m.model_id: (m.bounds.min_replicas, m.bounds.max_replicas)
                           for m in plan_cluster(cluster_spec, spec_dir).models}
        kubernetes_status(cluster_spec.name, planned, context=context, namespace=namespace,
                          kubeconfig=kubeconfig, as_json=as_json)
        return
    try:
        report = collect(cluster_spec)
    except RuntimeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"app {report['app']} at {report['api_url']}: {report['status']}")
    for model_id, eps in report["endpoints"].items():
        typer.echo(f"  {model_id}: {len(eps)} replica(s)")
        for ep in eps:
            typer.echo(f"    {ep['url']}  ongoing={ep['ongoing']}")
    for model_id, vendor in report.get("vendor_endpoints", {}).items():
        if not isinstance(vendor, dict):
            continue
        why = f" ({vendor['reason']})" if vendor.get("reason") else ""
        typer.echo(f"  {model_id}: vendor endpoint {vendor['endpoint']} ({vendor['provider']}): "
                   f"circuit {vendor['state']}{why}")


def _register_tenancy_commands() -> None:
    from govllm.cluster_cli import register as register_cluster
    from govllm.pii_cli import register as register_pii
    from govllm.tenancy_cli import register

    register(app)
    register_cluster(app)
    register_pii(app)


_register_tenancy_commands()


def main() -> None:
    app()
