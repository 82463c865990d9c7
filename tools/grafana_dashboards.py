"""The chart's Grafana dashboards, written from one compact definition.

    python tools/grafana_dashboards.py            # rewrite helm/govllm/dashboards/*.json
    python tools/grafana_dashboards.py --check    # exit 1 if a committed file differs

Hand-kept dashboard JSON drifts: grid positions, datasource references and template
variables repeat on every panel. Here each panel is a title, its queries and a unit; the
layout and the boilerplate are computed. tests/unit/test_helm_observability.py fails when the
committed JSON is not what this writes, and tests/integration/test_prometheus.py runs every
query against a real Prometheus scraping the running stack.

Metric names: the router's and Ray Serve's come through Ray's metrics agent (`ray_` in
front); vLLM's engine metrics are `vllm:*` when each replica serves them itself
(`engine.metrics_exporter: vllm`, the default) and `ray_vllm_*` through Ray
(`metrics_exporter: ray`, what a ServiceMonitor can scrape on Kubernetes), so engine panels
select both names (`{__name__=~"vllm:x|ray_vllm_x"}`) and work with either exporter.
"""

# ruff: noqa: UP031  (PromQL is full of braces: %-formatting reads better than doubled {{}})
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "helm" / "govllm" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
M = 'model=~"$model"'
T = 'tenant=~"$tenant"'


def engine(name: str, extra: str = "") -> str:
    """A vLLM metric under either exporter's name (see the module docstring)."""
    matchers = f'__name__=~"vllm:{name}|ray_vllm_{name}", model_name=~"$model"'
    return "{" + matchers + (", " + extra if extra else "") + "}"


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    extra: dict = field(default_factory=dict)


@dataclass
class Row:
    title: str


def quantiles(metric: str, by: str, matchers: str) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{matchers}}}[{RATE}])))",
             f"p{int(q * 100)} {{{{{by}}}}}") for q in (0.5, 0.99)]


OVERVIEW = [
    Row("Traffic"),
    Panel("Requests/s", [("sum(rate(ray_govllm_requests_total{%s}[%s]))" % (M, RATE), "all")],
          "reqps", "Every request the routers answered, refusals included.", kind="stat", width=6, height=4),
    Panel("Server errors (5xx)", [
        ('(sum(rate(ray_govllm_requests_total{%s, status=~"5.."}[%s])) or vector(0)) / '
         "sum(rate(ray_govllm_requests_total{%s}[%s]))" % (M, RATE, M, RATE), "5xx share")],
          "percentunit", "Share of requests answered 5xx: what the availability SLO counts.",
          kind="stat", width=6, height=4),
    Panel("TTFT p99", [("histogram_quantile(0.99, sum by (le) (rate(ray_govllm_ttft_seconds_bucket{%s}[%s])))"
                        % (M, RATE), "p99")], "s", "Streamed answers' time to first token, all models.",
          kind="stat", width=6, height=4),
    Panel("Models without a ready replica", [
        ("count(max by (model) (ray_govllm_router_ready_replicas{%s}) == 0) or vector(0)" % M, "models")],
          "short", "Models no router can send to (alert GovllmModelNoReadyReplica).", kind="stat",
          width=6, height=4),
    Panel("Requests/s per model", [
        ("sum by (model) (rate(ray_govllm_requests_total{%s}[%s]))" % (M, RATE), "{{model}}")], "reqps"),
    Panel("Requests/s per status", [
        ("sum by (status) (rate(ray_govllm_requests_total{%s}[%s]))" % (M, RATE), "{{status}}")], "reqps",
          "HTTP status as sent; 499: the client went away."),
    Panel("Errors/s per model and code", [
        ('sum by (model, code) (rate(ray_govllm_requests_total{%s, code!=""}[%s]))' % (M, RATE),
         "{{model}} {{code}}")], "reqps", "Every refusal and failure by govllm's error code (docs/api.md)."),
    Panel("Tokens/s per model", [
        ("sum by (model, kind) (rate(ray_govllm_tokens_total{%s}[%s]))" % (M, RATE), "{{model}} {{kind}}")],
          "short", "Billed tokens: prompt and completion."),
    Row("Latency (at the router)"),
    Panel("Time to first token", quantiles("ray_govllm_ttft_seconds", "model", M), "s",
          "Streamed answers: arrival at the router to the first answer bytes leaving it.", width=8),
    Panel("Time per output token", quantiles("ray_govllm_tpot_seconds", "model", M), "s",
          "Streamed answers of 2 tokens or more.", width=8),
    Panel("End to end", quantiles("ray_govllm_e2e_seconds", "model", M), "s",
          "Answered requests (200), arrival to last byte.", width=8),
    Row("Routers"),
    Panel("In flight and queued per model", [
        ("sum by (model) (ray_govllm_router_inflight{%s})" % M, "in flight {{model}}"),
        ("sum by (model) (ray_govllm_router_queue_depth{%s})" % M, "queued {{model}}")], "short",
          "Admission control, summed over router replicas."),
    Panel("Shed, failovers and ejections/s", [
        ("sum by (model) (rate(ray_govllm_router_shed_total{%s}[%s]))" % (M, RATE), "shed {{model}}"),
        ("sum by (model) (rate(ray_govllm_failovers_total{%s}[%s]))" % (M, RATE), "failover {{model}}"),
        ("sum by (model, source) (rate(ray_govllm_replica_ejections_total{%s}[%s]))" % (M, RATE),
         "ejected ({{source}}) {{model}}")], "ops"),
    Panel("Ready replicas per model (router view)", [
        ("min by (model) (ray_govllm_router_ready_replicas{%s})" % M, "{{model}}")], "short",
          "Replicas in rotation as the least informed router sees them (ejections excluded)."),
    Panel("Shared store", [
        ("min(ray_govllm_quota_store_up)", "up (min over routers)"),
        ("histogram_quantile(0.99, sum by (command, le) (rate(ray_govllm_store_command_seconds_bucket[%s])))"
         % RATE, "p99 {{command}} (s)")], "short",
          "1 when every router reaches the store; p99 of its round trips in seconds."),
]

TENANTS = [
    Row("Budgets"),
    Panel("Monthly budget used", [("max by (tenant) (ray_govllm_budget_used_ratio{%s})" % T, "{{tenant}}")],
          "percentunit", "Tokens settled this month (Asia/Tokyo) over the monthly budget; alerts at "
          "80% and 100%.", kind="bargauge", width=12, height=8,
          extra={"options": {"displayMode": "gradient", "orientation": "horizontal"},
                 "fieldConfig": {"defaults": {"min": 0, "max": 1, "thresholds": {"mode": "absolute", "steps": [
                     {"color": "green", "value": None}, {"color": "orange", "value": 0.8},
                     {"color": "red", "value": 1}]}}}}),
    Panel("Hours until the budget is spent, at the last hour's burn", [
        ("(max by (tenant) (ray_govllm_budget_limit_tokens{%s}) - max by (tenant) "
         "(ray_govllm_budget_used_tokens{%s})) / (sum by (tenant) (rate(ray_govllm_tokens_total{%s}[1h])) * 3600)"
         % (T, T, T), "{{tenant}}")], "h", "Budget left over the tokens/hour of the last hour.", width=12),
    Panel("Token burn per tenant", [
        ("sum by (tenant) (rate(ray_govllm_tokens_total{%s}[%s]))" % (T, RATE), "{{tenant}}")], "short",
          "Billed tokens/s."),
    Panel("Cost per tenant (yen/hour)", [
        ("(sum by (tenant) (rate(ray_govllm_cost_yen_total{%s}[%s])) or 0 * sum by (tenant) "
         "(rate(ray_govllm_tokens_total{%s}[%s]))) * 3600" % (T, RATE, T, RATE), "{{tenant}}")], "short",
          "From the models' declared prices (vendor contracts); 0 for tenants using unpriced models only."),
    Row("Refusals"),
    Panel("Quota refusals/s", [
        ("sum by (tenant, limit) (rate(ray_govllm_quota_rejections_total{%s}[%s]))" % (T, RATE),
         "{{tenant}} {{limit}}")], "reqps", "429s by limit: requests_per_minute, tokens_per_minute, "
          "monthly_token_budget."),
    Panel("Requests/s per tenant and status", [
        ("sum by (tenant, status) (rate(ray_govllm_requests_total{%s}[%s]))" % (T, RATE),
         "{{tenant}} {{status}}")], "reqps"),
    Panel("Reservations outstanding", [
        ("max by (tenant) (ray_govllm_reservations_outstanding{%s})" % T, "{{tenant}}"),
        ("max by (tenant) (ray_govllm_reserved_tokens{%s})" % T, "tokens held {{tenant}}")], "short",
          "Requests in flight holding budget, and the tokens they hold."),
    Panel("TTFT p99 per tenant", [
        ("histogram_quantile(0.99, sum by (tenant, le) (rate(ray_govllm_ttft_seconds_bucket{%s}[%s])))" % (T, RATE),
         "{{tenant}}")], "s"),
]

ENGINES = [
    Row("Capacity"),
    Panel("KV cache usage", [(f"max by (model_name) ({engine('kv_cache_usage_perc')})", "{{model_name}}")],
          "percentunit", "Fullest replica of each model (vLLM's own gauge).", width=8),
    Panel("Waiting and running sequences", [
        (f"sum by (model_name) ({engine('num_requests_waiting')})", "waiting {{model_name}}"),
        (f"sum by (model_name) ({engine('num_requests_running')})", "running {{model_name}}")], "short",
          "Summed over the model's replicas.", width=8),
    Panel("Prefix cache hit rate", [
        (f"sum by (model_name) (rate({engine('prefix_cache_hits_total')}[{RATE}])) / "
         f"sum by (model_name) (rate({engine('prefix_cache_queries_total')}[{RATE}]))", "{{model_name}}")],
          "percentunit", "Prompt tokens found in the cache over prompt tokens looked up.", width=8),
    Panel("Healthy replicas per model deployment", [
        ('sum by (deployment) (ray_serve_deployment_replica_healthy{deployment=~"model:.*"})', "{{deployment}}")],
          "short", "Ray Serve's view (its health checks)."),
    Panel("Generated tokens/s", [
        (f"sum by (model_name) (rate({engine('generation_tokens_total')}[{RATE}]))", "{{model_name}}")], "short"),
    Row("Engine latency (vLLM's own)"),
    Panel("Engine time to first token", [
        (f"histogram_quantile(0.99, sum by (model_name, le) (rate({engine('time_to_first_token_seconds_bucket')}"
         f"[{RATE}])))", "p99 {{model_name}}")], "s", "Compare with the router's TTFT: the difference is "
          "govllm's own steps and queueing.", width=8),
    Panel("Engine queue time", [
        (f"histogram_quantile(0.99, sum by (model_name, le) (rate({engine('request_queue_time_seconds_bucket')}"
         f"[{RATE}])))", "p99 {{model_name}}")], "s", "Time in vLLM's waiting queue.", width=8),
    Panel("Preemptions/s", [
        (f"sum by (model_name) (rate({engine('num_preemptions_total')}[{RATE}]))", "{{model_name}}")], "ops",
          "Sequences evicted for lack of KV cache.", width=8),
]

AUDIT = [
    Row("Spool"),
    Panel("Records not yet uploaded", [
        ("sum(max by (NodeAddress) (ray_govllm_audit_pending_records))", "records")], "short",
          "Sealed spool segments' records on every node (each node counted once).", width=8),
    Panel("Oldest record not yet uploaded", [
        ("max(ray_govllm_audit_oldest_pending_age_seconds)", "age")], "s",
          "Alert GovllmAuditUploadLagging.", width=8),
    Panel("Spool size", [("max by (NodeAddress) (ray_govllm_audit_spool_bytes)", "{{NodeAddress}}")], "bytes",
          "Alert GovllmAuditSpoolGrowing.", width=8),
    Row("Throughput"),
    Panel("Records/s made durable", [("sum(rate(ray_govllm_audit_records_total[%s]))" % RATE, "records/s")],
          "ops", "Begin, end and feedback records written and fsynced."),
    Panel("Uploads and failures", [
        ("sum(rate(ray_govllm_audit_uploaded_segments_total[%s]))" % RATE, "segments uploaded/s"),
        ("sum(rate(ray_govllm_audit_upload_failures_total[%s]))" % RATE, "failed rounds/s")], "ops"),
]

DASHBOARDS = {
    "govllm-overview": ("govllm: service overview", OVERVIEW, ("model",)),
    "govllm-tenants": ("govllm: tenants", TENANTS, ("tenant",)),
    "govllm-engines": ("govllm: engines", ENGINES, ("model",)),
    "govllm-audit": ("govllm: audit pipeline", AUDIT, ()),
}


def _variable(name: str) -> dict:
    return {"name": name, "label": name, "type": "query", "datasource": DS,
            "query": {"query": f"label_values(ray_govllm_requests_total, {name})", "refId": name},
            "definition": f"label_values(ray_govllm_requests_total, {name})",
            "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2, "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def _panel(p: Panel, pid: int, x: int, y: int) -> dict:
    out = {"id": pid, "type": p.kind, "title": p.title, "datasource": DS,
           "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
           "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
           "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                       for i, (expr, legend) in enumerate(p.targets)]}
    if p.description:
        out["description"] = p.description
    if p.kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                          "tooltip": {"mode": "multi"}}
    for key, value in p.extra.items():
        if key == "fieldConfig":
            out["fieldConfig"]["defaults"].update(value["defaults"])
        else:
            out[key] = value
    return out


def dashboard(uid: str) -> dict:
    title, items, variables = DASHBOARDS[uid]
    panels, x, y, row_h, pid = [], 0, 0, 0, 1
    for item in items:
        if isinstance(item, Row):
            y += row_h
            x, row_h = 0, 0
            panels.append({"id": pid, "type": "row", "title": item.title, "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            y += 1
        else:
            if x + item.width > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(_panel(item, pid, x, y))
            x += item.width
            row_h = max(row_h, item.height)
        pid += 1
    links = [{"title": t, "type": "link", "url": f"/d/{u}"} for u, (t, _, _) in DASHBOARDS.items() if u != uid]
    return {
        "uid": uid, "title": title, "tags": ["govllm"], "timezone": "Asia/Tokyo",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "links": links,
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus"}, *(_variable(v) for v in variables)]},
        "panels": panels,
    }


def rendered() -> dict[str, str]:
    return {f"{uid}.json": json.dumps(dashboard(uid), indent=1, ensure_ascii=False) + "\n" for uid in DASHBOARDS}


def main() -> int:
    parser = argparse.ArgumentParser(description="Write (or check) the chart's Grafana dashboards.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args()
    files = rendered()
    stale = sorted(set(p.name for p in OUT.glob("*.json")) - set(files))
    if args.check:
        wrong = [n for n, text in files.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text]
        if wrong or stale:
            print(f"out of date: {wrong + stale}; run python tools/grafana_dashboards.py", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (OUT / name).unlink()
    for name, text in files.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
