"""The scrape targets of a local run, as Prometheus file-based service discovery reads them.

Two kinds of endpoint carry govllm's metrics: each Ray node's metrics port (the router's
`ray_govllm_*` and Ray Serve's `ray_serve_*`, for every replica on the node; with
`engine.metrics_exporter: ray` vLLM's too) and, with the default `vllm` exporter, each model
replica's data-plane `/metrics` (vLLM's own `vllm:*`, open without the data-plane
credential). Replica ports are chosen at start, so the list is read from the running
application (`govllm status`) and written as a file_sd file that Prometheus re-reads when
it changes (`govllm metrics targets --watch`). On Kubernetes the chart's ServiceMonitor
does this job (Ray's metrics port on every pod).
"""

from __future__ import annotations

from urllib.parse import urlsplit


def scrape_targets(report: dict) -> list[dict]:
    """file_sd target groups from `govllm status --json`'s report."""
    groups = [{"targets": sorted({urlsplit(u).netloc for u in report.get("metrics_urls", [])}),
               "labels": {"govllm_app": report["app"], "govllm_component": "ray"}}]
    for model, endpoints in sorted(report.get("endpoints", {}).items()):
        for ep in endpoints:
            groups.append({"targets": [urlsplit(ep["url"]).netloc],
                           "labels": {"govllm_app": report["app"], "govllm_component": "engine",
                                      "model": model, "replica": ep["replica_id"]}})
    return [g for g in groups if g["targets"]]


def metrics_urls(groups: list[dict]) -> list[str]:
    """The /metrics URL of every target (what `govllm top` scrapes without a Prometheus)."""
    return [f"http://{t}/metrics" for g in groups for t in g["targets"]]
