"""What every `govllm` command shares: the spec option, loading it, planner errors, output.

Command modules (one per command group in this package) import this module and never
the assembly (`govllm.cli.main`), so the package has no import cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from cluster.spec.schema import ClusterSpec, SpecError, load_spec

#: Environment variables for the options most commands share (docs/operator-guide.md).
SPEC_ENV, CONTEXT_ENV, NAMESPACE_ENV = "GOVLLM_SPEC", "GOVLLM_CONTEXT", "GOVLLM_NAMESPACE"

SpecOption = typer.Option(
    None, "--spec", "-s", envvar=SPEC_ENV,
    help="Cluster spec YAML file. Default: the embedded local spec.",
    exists=False, dir_okay=False,
)

OutputOption = typer.Option(None, "--output", "-o", help="File to write; default stdout.")


def load(spec: Path | None) -> tuple[ClusterSpec, Path]:
    """The spec and its directory; a spec error is printed and exits 1."""
    try:
        return load_spec(spec)
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@contextmanager
def planning_errors() -> Iterator[None]:
    """GPU specs are sized by the planner: a refusal exits 2, bad planner input exits 1."""
    from cluster.sizing.inputs import PlanDoesNotFit, PlanningError

    try:
        yield
    except PlanDoesNotFit as exc:  # see `govllm plan --spec` for the alternatives
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except PlanningError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


def write_output(text: str, output: Path | None) -> None:
    """Generated files go to --output when given, else to stdout (for piping into helm/kubectl).

    UTF-8 always: specs and records carry Japanese text whatever the operator's locale."""
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
