"""`govllm status`: the running application, local or on Kubernetes (--context)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from govllm.cli.common import CONTEXT_ENV, NAMESPACE_ENV, SpecOption, load, planning_errors


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

    cluster_spec, spec_dir = load(spec)
    if context is not None:
        from govllm.cli.cluster import kubernetes_status

        planned: dict[str, tuple[int, int]] = {}
        if cluster_spec.engine.device == "gpu":
            from cluster.sizing.cluster_plan import plan_cluster

            with planning_errors():
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


def register(app: typer.Typer) -> None:
    app.command()(status)
