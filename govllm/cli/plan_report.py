"""Readable tables of sizing plans (rich), for `govllm plan`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.sizing.cluster_plan import ClusterPlan
from cluster.sizing.cpu_plan import CpuModelPlan
from cluster.sizing.memory import GIB
from cluster.sizing.planner import SizingPlan
from cluster.spec.schema import ClusterSpec


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f} GiB"


def model_table(plan: SizingPlan) -> Table:
    req = plan.request
    table = Table(title=f"{req.model} on {req.gpu.name}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("fits", "[green]yes[/green]" if plan.fits else "[red]no[/red]"),
        ("quantization / KV cache", f"{req.quantization} / {req.kv_cache_dtype}"),
        ("tensor x pipeline parallel", f"{plan.tensor_parallel_size} x {plan.pipeline_parallel_size}"
                                       f" = {plan.gpus_per_replica} GPU(s), {plan.nodes_per_replica} node(s)"),
        ("parameters", f"{req.params / 1e9:,.2f} B"),
        ("weights (all / per GPU)", f"{_gib(plan.weight_bytes)} / {_gib(plan.weight_bytes_per_gpu)}"),
        ("overhead per GPU (est.)", _gib(plan.overhead_bytes_per_gpu)),
        ("budget per GPU", f"{_gib(plan.budget_bytes_per_gpu)} "
                           f"({req.gpu_memory_utilization} x {req.gpu.reported_memory_gib} GiB)"),
        ("KV cache per GPU", _gib(plan.kv_cache_bytes_per_gpu)),
        ("KV bytes per token (model)", f"{plan.kv_cache_bytes_per_token:,}"),
        ("KV capacity", f"{plan.kv_cache_tokens:,} tokens in {plan.num_blocks:,} blocks of "
                        f"{plan.kv_block_size}"),
        ("sequences at max_model_len", f"{plan.max_concurrency:.2f} x {req.max_model_len:,} tokens"),
        ("max_num_seqs / batched tokens", f"{plan.max_num_seqs} / {plan.max_num_batched_tokens}"),
        ("autoscaling target", f"{plan.target_ongoing_requests} ongoing requests per replica"),
        ("decode throughput", f"{plan.throughput.decode_tokens_per_s:,.0f} tokens/s per replica "
                              f"({plan.throughput.source}, batch {plan.throughput.batch})"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def alternatives_table(plan: SizingPlan) -> Table:
    table = Table(title="Alternatives that fit (fewest GPUs first)", title_justify="left")
    for column in ("GPU", "quantization", "KV", "TP", "PP", "GPUs", "KV tokens", "seqs at max len"):
        table.add_column(column)
    for alt in plan.alternatives:
        table.add_row(alt["gpu"], alt["quantization"], alt["kv_cache_dtype"],
                      str(alt["tensor_parallel_size"]), str(alt["pipeline_parallel_size"]),
                      str(alt["gpus_per_replica"]), f"{alt['kv_cache_tokens']:,}",
                      str(alt["max_concurrent_sequences"]))
    return table


def print_plan(plan: SizingPlan, console: Console) -> None:
    console.print(model_table(plan))
    for note in plan.notes:
        console.print(f"note: {note}")
    if plan.alternatives:
        console.print(alternatives_table(plan))


def cluster_table(cluster: ClusterPlan) -> Table:
    table = Table(title="Models", title_justify="left")
    for column in ("model", "GPU", "quant", "TP x PP", "KV tokens", "target", "req/s per replica",
                   "replicas", "GPUs at peak", "fits"):
        table.add_column(column)
    for m in cluster.models:
        s = m.sizing
        table.add_row(
            m.model_id, s.request.gpu.id, s.request.quantization,
            f"{s.tensor_parallel_size} x {s.pipeline_parallel_size}", f"{s.kv_cache_tokens:,}",
            str(s.target_ongoing_requests), f"{m.bounds.requests_per_s_per_replica:.2f}",
            f"{m.bounds.min_replicas}-{m.bounds.max_replicas}", str(m.gpus_at_max),
            "yes" if s.fits else "[red]no[/red]",
        )
    return table


def totals_table(cluster: ClusterPlan) -> Table:
    table = Table(title="GPUs per class", title_justify="left")
    for column in ("GPU class", "at min replicas", "at peak (max replicas)"):
        table.add_column(column)
    for gpu, totals in cluster.gpus_per_class().items():
        table.add_row(gpu, str(totals["min"]), str(totals["max"]))
    return table


def endpoints_table(cluster: ClusterPlan) -> Table:
    """Vendor-hosted models: no GPUs of ours to size; their contract is their capacity."""
    table = Table(title="Endpoints (not sized: capacity from the contract)", title_justify="left")
    for column in ("model", "provider", "concurrency", "RPM", "TPM", "max confidentiality"):
        table.add_column(column)
    for e in cluster.endpoints:
        table.add_row(
            e.model_id, e.provider, str(e.max_concurrency),
            "-" if e.requests_per_minute is None else f"{e.requests_per_minute:,}",
            "-" if e.tokens_per_minute is None else f"{e.tokens_per_minute:,}",
            str(e.max_confidentiality),
        )
    return table


def print_cluster(cluster: ClusterPlan, console: Console) -> None:
    console.print(cluster_table(cluster))
    console.print(totals_table(cluster))
    if cluster.endpoints:
        console.print(endpoints_table(cluster))


def cpu_plan_json(spec: ClusterSpec, plans: list[CpuModelPlan]) -> dict[str, Any]:
    """A CPU spec's scaling plan: per model, its bounds and autoscaling target."""
    return {"device": "cpu", "models": [p.to_json() for p in plans],
            "autoscaling": spec.autoscaling.serve_options()}


def print_cpu_plan(spec: ClusterSpec, plans: list[CpuModelPlan], console: Console) -> None:
    table = Table(title=f"{spec.name}: CPU models, sized as written (replicas)", title_justify="left")
    for column in ("model", "replicas", "runs at once", "autoscaling target", "on demand"):
        table.add_column(column)
    for p in plans:
        table.add_row(p.model_id, f"{p.min_replicas}..{p.max_replicas}", str(p.max_ongoing_requests),
                      f"{p.target_ongoing_requests} ongoing requests per replica",
                      "yes (scales to zero)" if p.on_demand else "no")
    console.print(table)
    delays = spec.autoscaling.serve_options()
    console.print("autoscaling delays: " + (", ".join(f"{k} {v:g}" for k, v in delays.items())
                                            or "Ray Serve's defaults"))
