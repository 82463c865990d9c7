"""`govllm weights | preflight` and the Kubernetes side of `govllm status`.

The logic lives in cluster/ops/ (weights.py, preflight.py, rayservice_status.py); this module
only parses options, prints, and maps outcomes to exit codes (0 ok, 1 a failed check or bad
input, 2 a plan that does not fit).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from govllm.cli.common import load, planning_errors

weights_app = typer.Typer(help="Stage model weights in object storage: push, verify, pull.",
                          no_args_is_help=True)

ModelOption = typer.Option(..., "--model", "-m", help="Model id (as in the spec); recorded in the manifest.")
EndpointOption = typer.Option(None, "--endpoint-url", envvar="AWS_ENDPOINT_URL_S3",
                              help="S3-compatible endpoint (non-AWS clouds).")
RegionOption = typer.Option(None, "--region", envvar="AWS_REGION", help="Object storage region.")
WorkersOption = typer.Option(4, "--workers", "-j", min=1, max=64, envvar="GOVLLM_WEIGHTS_WORKERS",
                             help="Files transferred in parallel (memory: about workers x 3 parts).")
ChecksumsOption = typer.Option(
    "auto", "--checksums", envvar="GOVLLM_S3_CHECKSUMS",
    help="boto3 request/response checksums: when_supported (AWS default), when_required (what "
    "S3-compatible services accept), auto (when_required with an endpoint URL).")


def _client(endpoint_url: str | None, region: str | None, checksums: str = "auto", workers: int = 4):
    from cluster.ops.weights import s3_client
    from serving.s3checksums import CHECKSUM_MODES

    if checksums not in CHECKSUM_MODES:
        raise typer.BadParameter(f"one of {', '.join(CHECKSUM_MODES)}", param_hint="--checksums")
    return s3_client(endpoint_url=endpoint_url, region=region, checksums=checksums,  # type: ignore[arg-type]
                     workers=workers)


def _progress(description: str):
    from govllm.progress import progress

    return progress(description, "bytes")


def _finish(report, verb: str) -> None:
    from cluster.ops.weights import Report

    assert isinstance(report, Report)
    for problem in report.problems:
        typer.echo(f"  {problem}", err=True)
    if report.problems:
        typer.echo(f"{report.model}: {verb} FAILED ({len(report.problems)} problem(s))", err=True)
        raise typer.Exit(1)
    extra = f", {report.skipped} already present" if report.skipped else ""
    if report.skipped:
        extra += f" ({report.rehashed} re-hashed)"
    typer.echo(f"{report.model}: {verb} ok: {report.files} files, {report.bytes} bytes{extra}")


@weights_app.command("push")
def weights_push(
    model: str = ModelOption,
    source: Path = typer.Option(..., "--from", help="Checkpoint directory from the vendor.",
                                exists=True, file_okay=False),
    dest: str = typer.Option(..., "--to", help="s3://bucket/prefix/ (the spec's models[].source.uri)."),
    kms_key_id: str = typer.Option(..., "--kms-key-id", help="KMS key for SSE-KMS (id, ARN or alias)."),
    part_size_mib: int = typer.Option(64, min=5, help="Multipart part size (S3 minimum: 5 MiB)."),
    endpoint_url: str | None = EndpointOption,
    region: str | None = RegionOption,
    workers: int = WorkersOption,
    checksums: str = ChecksumsOption,
) -> None:
    """Upload a checkpoint (multipart, SSE-KMS) with a per-file SHA-256 manifest, written last.

    Each file is read once (hashed while it is uploaded); files go up in parallel.
    """
    from cluster.ops.weights import WeightsError, push

    try:
        with _progress(f"push {model}") as bar:
            manifest = push(_client(endpoint_url, region, checksums, workers), model, source, dest,
                            kms_key_id=kms_key_id, part_size=part_size_mib * 2**20,
                            workers=workers, progress=bar)
    except WeightsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    size = sum(f["size"] for f in manifest["files"])
    typer.echo(f"{model}: pushed {len(manifest['files'])} files, {size} bytes to {dest} "
               "(manifest govllm-manifest.json)")


@weights_app.command("verify")
def weights_verify(
    model: str = ModelOption,
    dest: str = typer.Option(..., "--to", help="s3://bucket/prefix/ to check."),
    source: Path | None = typer.Option(None, "--from", file_okay=False,
                                       help="Also check the vendor's local files against the manifest."),
    endpoint_url: str | None = EndpointOption,
    region: str | None = RegionOption,
    workers: int = WorkersOption,
    checksums: str = ChecksumsOption,
) -> None:
    """Re-read every object of the bucket copy: size, SHA-256 and SSE-KMS against the manifest."""
    from cluster.ops.weights import WeightsError, verify

    try:
        with _progress(f"verify {model}") as bar:
            report = verify(_client(endpoint_url, region, checksums, workers), model, dest,
                            local=source, workers=workers, progress=bar)
    except WeightsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    _finish(report, "verify")


@weights_app.command("pull")
def weights_pull(
    model: str = ModelOption,
    source: str = typer.Option(..., "--from", help="s3://bucket/prefix/ written by push."),
    dest: Path = typer.Option(..., "--to", help="Local directory (the chart's staged path)."),
    endpoint_url: str | None = EndpointOption,
    region: str | None = RegionOption,
    workers: int = WorkersOption,
    checksums: str = ChecksumsOption,
    rehash: bool = typer.Option(False, "--rehash", help="Re-read files already in place even when "
                                "the last pull's manifest records their size and modification time."),
) -> None:
    """Download and verify every file (the chart's weight-staging init step); idempotent.

    Files a previous pull left in place (same size and modification time as its manifest
    records) are kept without reading them again.
    """
    from cluster.ops.weights import WeightsError, pull

    try:
        with _progress(f"pull {model}") as bar:
            report = pull(_client(endpoint_url, region, checksums, workers), model, source, dest,
                          workers=workers, rehash=rehash, progress=bar)
    except WeightsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    _finish(report, "pull")


def preflight(
    spec: Path = typer.Option(..., "--spec", "-s", envvar="GOVLLM_SPEC", help="Cluster spec YAML file.",
                              dir_okay=False),
    context: str | None = typer.Option(None, "--context", envvar="GOVLLM_CONTEXT",
                                       help="kubeconfig context; default: current."),
    namespace: str = typer.Option("govllm", "--namespace", "-n", envvar="GOVLLM_NAMESPACE",
                                  help="Namespace of the release."),
    profile: str | None = typer.Option(None, "--profile",
                                       help="Cloud profile of the chart: aws, gcp, azure, oci, sakura."),
    values: list[Path] = typer.Option([], "--values", "-f", help="More values files, as given to helm."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check the live cluster against the plan: CRD, GPU nodes, storage, quotas, Secrets.

    Prints a pass/fail table; exits 1 when a check fails (WARN: the peak needs more than
    the cluster has now). The values are the chart's as helm would merge them.
    """
    from cluster.ops.kube import ClusterUnreachable, Kube
    from cluster.ops.preflight import FAIL, chart_values, run_checks
    from cluster.render.helm_values import helm_values

    cluster_spec, spec_dir = load(spec)
    with planning_errors():
        generated = helm_values(cluster_spec, spec_dir, source=str(spec))
    merged = chart_values(generated, profile, values)
    try:
        checks = run_checks(Kube(context, config_file=kubeconfig), namespace, merged)
    except ClusterUnreachable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        table = Table(title=f"preflight {cluster_spec.name} -> {context or 'current context'}/{namespace}")
        for col in ("check", "result", "detail"):
            table.add_column(col)
        colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
        for c in checks:
            table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail)
        Console(width=160).print(table)
    if any(c.status == FAIL for c in checks):
        raise typer.Exit(1)


def kubernetes_status(spec_name: str, planned: dict[str, tuple[int, int]], *, context: str | None,
                      namespace: str, kubeconfig: str | None, as_json: bool) -> None:
    """`govllm status --context`: the RayService, its pods and the router's per-model view."""
    from cluster.ops.kube import ClusterUnreachable, Kube
    from cluster.ops.rayservice_status import format_report, summarize

    try:
        kube = Kube(context, config_file=kubeconfig)
        rs = kube.rayservice(namespace, spec_name)
        if rs is None:
            typer.echo(f"no RayService {spec_name!r} in namespace {namespace!r} "
                       f"(context {context or 'current'}): install the chart first", err=True)
            raise typer.Exit(1)
        pods = kube.pods(namespace, f"govllm.io/spec={spec_name}")
        readyz, error = kube.router_readyz(namespace, spec_name)
    except ClusterUnreachable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    report = summarize(rs, pods, readyz, readyz_error=error, planned=planned)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo("\n".join(format_report(report)))


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
    app.command("preflight")(preflight)
