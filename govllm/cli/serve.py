"""`govllm serve | validate | generate-models`: run a spec on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.spec.schema import DEFAULT_SPEC_PATH
from govllm.cli.common import SpecOption, load, planning_errors


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
    cluster_spec, spec_dir = load(spec)
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if overrides:
        cluster_spec = cluster_spec.model_copy(
            update={"router": cluster_spec.router.model_copy(update=overrides)}
        )
    from govllm.local import serve as run_local

    with planning_errors():
        code = run_local(cluster_spec, spec_dir, ready_timeout_s=ready_timeout)
    raise typer.Exit(code)


def validate(spec: Path | None = SpecOption) -> None:
    """Check a cluster spec; prints one line per problem and exits 1 if there are any."""
    cluster_spec, _ = load(spec)
    typer.echo(f"{spec or DEFAULT_SPEC_PATH}: valid ({len(cluster_spec.models)} models)")


def generate_models(spec: Path | None = SpecOption) -> None:
    """Create the spec's development models (tokenizer + random weights) if missing."""
    from govllm.local import prepare_models

    cluster_spec, _ = load(spec)
    prepare_models(cluster_spec)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(validate)
    app.command("generate-models")(generate_models)
