"""`govllm render serve-config | helm-values`: configuration derived from a cluster spec."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from govllm.cli.common import (
    SPEC_ENV,
    OutputOption,
    SpecOption,
    load,
    planning_errors,
    write_output,
)

render_app = typer.Typer(help="Write configuration derived from a cluster spec.", no_args_is_help=True)


@render_app.command("serve-config")
def render_serve_config(
    spec: Path | None = SpecOption,
    output: Path | None = OutputOption,
) -> None:
    """The Ray Serve config (serveConfigV2 shape) that runs the spec's application."""
    from cluster.render.serve_config import serve_config_file

    cluster_spec, spec_dir = load(spec)
    with planning_errors():
        config = serve_config_file(cluster_spec, spec_dir)
    write_output(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), output)


@render_app.command("helm-values")
def render_helm_values(
    spec: Path = typer.Option(..., "--spec", "-s", envvar=SPEC_ENV,
                              help="Cluster spec YAML file (engine.device gpu).", dir_okay=False),
    output: Path | None = OutputOption,
) -> None:
    """Values for the helm/govllm chart: worker groups, GPUs and serveConfigV2 from the planner.

    Use with a cloud profile: helm install govllm helm/govllm -f <this file>
    -f helm/govllm/profiles/<cloud>.yaml. Exit status: 0 written, 2 the plan does not fit,
    1 the spec cannot run on Kubernetes as written (the message names the field).
    """
    from cluster.render.helm_values import helm_values, render_text

    cluster_spec, spec_dir = load(spec)
    with planning_errors():
        text = render_text(helm_values(cluster_spec, spec_dir, source=str(spec)), source=str(spec))
    write_output(text, output)


def register(app: typer.Typer) -> None:
    app.add_typer(render_app, name="render")
