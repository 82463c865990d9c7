"""`govllm top`: per model and tenant, what the platform is doing now.

One frame is computed from a metrics source (govllm/observe/sources.py: a Prometheus server
or the endpoints themselves) with the metrics the dashboards use (docs/observability.md):

* per model and tenant: requests/s, refused (4xx) and failed (5xx) per second, prompt and
  completion tokens/s, TTFT p50 and p99 (streamed answers);
* per model: replicas in the routers' rotation, requests in flight and queued at the
  routers, the engines' KV-cache use and waiting sequences;
* per budgeted tenant: the month's budget used.

Rendered with rich as tables refreshed in place (`--once`: one frame, for scripts and tests;
`--json`: the frame as JSON).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from govllm.observe.sources import Source

REQUESTS = ["ray_govllm_requests_total"]
TOKENS = ["ray_govllm_tokens_total"]
TTFT = "ray_govllm_ttft_seconds"
KV = ["vllm:kv_cache_usage_perc", "ray_vllm_kv_cache_usage_perc"]
WAITING = ["vllm:num_requests_waiting", "ray_vllm_num_requests_waiting"]


@dataclass
class Row:
    model: str
    tenant: str
    requests_per_s: float = 0.0
    refused_per_s: float = 0.0  # 4xx
    failed_per_s: float = 0.0  # 5xx
    prompt_tokens_per_s: float = 0.0
    completion_tokens_per_s: float = 0.0
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None


@dataclass
class ModelRow:
    model: str
    ready_replicas: float | None = None
    in_flight: float | None = None
    queued: float | None = None
    kv_cache_usage: float | None = None
    engine_waiting: float | None = None


@dataclass
class Frame:
    source: str
    at: float
    rows: list[Row] = field(default_factory=list)
    models: list[ModelRow] = field(default_factory=list)
    budgets: dict[str, float] = field(default_factory=dict)  # tenant -> share of the month's budget used

    def to_json(self) -> dict:
        return asdict(self)


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def collect(source: Source, name: str) -> Frame:
    source.refresh()
    by = ("model", "tenant")
    rows: dict[tuple[str, str], Row] = {}

    def row(key) -> Row:
        return rows.setdefault(key, Row(*key))

    for key, v in source.rate(REQUESTS, by).items():
        row(key).requests_per_s = v
    for key, v in source.rate(REQUESTS, by, {"status": "4.."}).items():
        row(key).refused_per_s = v
    for key, v in source.rate(REQUESTS, by, {"status": "5.."}).items():
        row(key).failed_per_s = v
    for (model, tenant, kind), v in source.rate(TOKENS, ("model", "tenant", "kind")).items():
        if kind == "prompt":
            row((model, tenant)).prompt_tokens_per_s = v
        elif kind == "completion":
            row((model, tenant)).completion_tokens_per_s = v
    for key, v in source.quantile(0.5, TTFT, by).items():
        row(key).ttft_p50_s = _num(v)
    for key, v in source.quantile(0.99, TTFT, by).items():
        row(key).ttft_p99_s = _num(v)
    models: dict[str, ModelRow] = {}

    def model_row(model: str) -> ModelRow:
        return models.setdefault(model, ModelRow(model))

    for (model,), v in source.gauge(["ray_govllm_router_ready_replicas"], ("model",), "min").items():
        model_row(model).ready_replicas = v
    for (model,), v in source.gauge(["ray_govllm_router_inflight"], ("model",), "sum").items():
        model_row(model).in_flight = v
    for (model,), v in source.gauge(["ray_govllm_router_queue_depth"], ("model",), "sum").items():
        model_row(model).queued = v
    for (model,), v in source.gauge(KV, ("model_name",), "max").items():
        model_row(model).kv_cache_usage = v
    for (model,), v in source.gauge(WAITING, ("model_name",), "sum").items():
        model_row(model).engine_waiting = v
    budgets = {tenant: v for (tenant,), v in source.gauge(["ray_govllm_budget_used_ratio"], ("tenant",), "max").items()}
    active = [r for r in rows.values() if r.requests_per_s > 0 or r.prompt_tokens_per_s > 0]
    return Frame(source=name, at=time.time(),
                 rows=sorted(active, key=lambda r: (-r.requests_per_s, r.model, r.tenant)),
                 models=[models[m] for m in sorted(models)], budgets=dict(sorted(budgets.items())))


# -- rendering ---------------------------------------------------------------------------------------
def _f(value: float | None, fmt: str = "{:.2f}", dash: str = "-") -> str:
    return dash if value is None else fmt.format(value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def render(frame: Frame):
    """The frame as rich renderables (a Group of three tables)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text(f"govllm top  {time.strftime('%H:%M:%S', time.localtime(frame.at))}  from {frame.source}",
                style="bold")
    traffic = Table(title="per model and tenant", title_justify="left", expand=False)
    for col in ("model", "tenant"):  # names stay whole; a narrow terminal loses columns on the right
        traffic.add_column(col, no_wrap=True, min_width=len(col))
    for col in ("req/s", "4xx/s", "5xx/s", "in tok/s", "out tok/s", "TTFT p50", "TTFT p99", "budget"):
        traffic.add_column(col, justify="right", no_wrap=True)
    for r in frame.rows:
        budget = frame.budgets.get(r.tenant)
        traffic.add_row(r.model, r.tenant, _f(r.requests_per_s), _f(r.refused_per_s),
                        Text(_f(r.failed_per_s), style="red" if r.failed_per_s > 0 else ""),
                        _f(r.prompt_tokens_per_s, "{:.1f}"), _f(r.completion_tokens_per_s, "{:.1f}"),
                        _ms(r.ttft_p50_s), _ms(r.ttft_p99_s), _f(budget, "{:.1%}"))
    if not frame.rows:
        traffic.add_row("(no requests in the window)", "", *[""] * 8)
    models = Table(title="per model", title_justify="left")
    models.add_column("model")
    for col in ("ready replicas", "in flight", "queued", "KV cache", "engine waiting"):
        models.add_column(col, justify="right")
    for m in frame.models:
        ready = _f(m.ready_replicas, "{:.0f}")
        models.add_row(m.model, Text(ready, style="bold red" if m.ready_replicas == 0 else ""),
                       _f(m.in_flight, "{:.0f}"), _f(m.queued, "{:.0f}"), _f(m.kv_cache_usage, "{:.1%}"),
                       _f(m.engine_waiting, "{:.0f}"))
    budgets = Table(title="monthly budgets", title_justify="left")
    budgets.add_column("tenant")
    budgets.add_column("used", justify="right")
    budgets.add_column("", min_width=20)
    for tenant, used in frame.budgets.items():
        filled = min(20, round(used * 20))
        style = "red" if used >= 1 else "yellow" if used >= 0.8 else "green"
        budgets.add_row(tenant, f"{used:.1%}", Text("█" * filled + "·" * (20 - filled), style=style))
    return Group(head, traffic, models, budgets)
