"""`govllm top`'s arithmetic without a stack: scraped text -> rates, aggregates and quantiles as
PromQL computes them, and the frame and its tables. Against the running stack and a real
Prometheus: tests/integration/test_prometheus.py."""

from __future__ import annotations

import io
import math

from rich.console import Console

from govllm.observe.sources import PrometheusSource, ScrapeSource, _selector, bucket_quantile, parse
from govllm.observe.targets import metrics_urls, scrape_targets
from govllm.observe.top import collect, render

#: Ray's exposition of the router's metrics (labels as its agent writes them, shortened).
RAY = """# HELP ray_govllm_requests_total Requests answered
# TYPE ray_govllm_requests_total counter
ray_govllm_requests_total{{WorkerId="a",code="",model="m",operation="chat",status="200",tenant="city"}} {ok_a}
ray_govllm_requests_total{{WorkerId="b",code="",model="m",operation="chat",status="200",tenant="city"}} {ok_b}
ray_govllm_requests_total{{WorkerId="a",code="model_overloaded",model="m",operation="chat",status="503",tenant="city"}} {shed}
# HELP ray_govllm_tokens_total Tokens
# TYPE ray_govllm_tokens_total counter
ray_govllm_tokens_total{{WorkerId="a",kind="completion",model="m",tenant="city"}} {tokens}
# HELP ray_govllm_ttft_seconds TTFT
# TYPE ray_govllm_ttft_seconds histogram
ray_govllm_ttft_seconds_bucket{{WorkerId="a",le="0.1",model="m",tenant="city"}} {fast}
ray_govllm_ttft_seconds_bucket{{WorkerId="a",le="1.0",model="m",tenant="city"}} {all_}
ray_govllm_ttft_seconds_bucket{{WorkerId="a",le="+Inf",model="m",tenant="city"}} {all_}
ray_govllm_ttft_seconds_count{{WorkerId="a",model="m",tenant="city"}} {all_}
ray_govllm_ttft_seconds_sum{{WorkerId="a",model="m",tenant="city"}} 1.0
# HELP ray_govllm_router_ready_replicas Ready
# TYPE ray_govllm_router_ready_replicas gauge
ray_govllm_router_ready_replicas{{WorkerId="a",model="m",router="r1"}} 2.0
ray_govllm_router_ready_replicas{{WorkerId="b",model="m",router="r2"}} 1.0
# HELP ray_govllm_budget_used_ratio Budget
# TYPE ray_govllm_budget_used_ratio gauge
ray_govllm_budget_used_ratio{{WorkerId="a",tenant="city"}} 0.25
ray_govllm_budget_used_ratio{{WorkerId="b",tenant="city"}} 0.25
"""
#: vLLM's own exposition on a replica's data plane.
VLLM = """# HELP vllm:kv_cache_usage_perc KV-cache usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
"""


def _source(*scrapes: dict, refresh: int | None = None) -> ScrapeSource:
    """A source over Ray's text as `scrapes` give it (the last one repeats), 10 s apart;
    refreshed `refresh` times (default: once per scrape given)."""
    texts = list(scrapes)

    def fetch(url: str):
        if url.endswith("engine/metrics"):
            return parse(VLLM)
        return parse(RAY.format(**(texts.pop(0) if len(texts) > 1 else texts[0])))

    clock = iter(range(0, 1000, 10))
    source = ScrapeSource(["http://ray/metrics", "http://engine/metrics"], window_s=60, fetch=fetch,
                          clock=lambda: float(next(clock)))
    for _ in range(len(scrapes) if refresh is None else refresh):
        source.refresh()
    return source


FIRST = dict(ok_a=10, ok_b=5, shed=0, tokens=100, fast=10, all_=10)
LATER = dict(ok_a=20, ok_b=15, shed=2, tokens=300, fast=15, all_=20)  # 10 s later


def test_rates_aggregate_like_promql():
    source = _source(FIRST, LATER)
    assert source.rate(["ray_govllm_requests_total"], ("model", "tenant")) == {("m", "city"): 2.2}
    assert source.rate(["ray_govllm_requests_total"], ("model",), {"status": "5.."}) == {("m",): 0.2}
    assert source.gauge(["ray_govllm_router_ready_replicas"], ("model",), "min") == {("m",): 1.0}
    assert source.gauge(["vllm:kv_cache_usage_perc", "ray_vllm_kv_cache_usage_perc"], ("model_name",), "max") \
        == {("m",): 0.42}
    # 10 more streams, 5 of them under 0.1 s: the median falls at the 0.1 s bound
    (p50,) = source.quantile(0.5, "ray_govllm_ttft_seconds", ("model",)).values()
    assert math.isclose(p50, 0.1)


def test_a_restarted_replica_counts_from_zero():
    restarted = dict(LATER, ok_a=3)  # worker a restarted: its counter starts over
    rates = _source(FIRST, restarted).rate(["ray_govllm_requests_total"], ("model",), {"status": "200"})
    assert rates == {("m",): (3 + 10) / 10}


def test_bucket_quantile_is_prometheus_histogram_quantile():
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (math.inf, 40.0)]
    assert math.isclose(bucket_quantile(0.5, buckets), 0.3)  # 0.1 + 0.4 * (20 - 10) / 20
    assert math.isclose(bucket_quantile(0.99, buckets), 0.98)
    assert math.isclose(bucket_quantile(0.05, buckets), 0.02)  # first bucket from 0: 0.1 * 2 / 10
    assert bucket_quantile(0.99, [(0.1, 1.0), (math.inf, 2.0)]) == 0.1  # rank in +Inf: last bound
    assert math.isnan(bucket_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))


def test_frame_and_tables():
    frame = collect(_source(FIRST, LATER, refresh=1), "test")  # collect takes the second scrape
    (row,) = frame.rows
    assert (row.model, row.tenant, row.requests_per_s, row.failed_per_s) == ("m", "city", 2.2, 0.2)
    assert row.completion_tokens_per_s == 20.0 and row.ttft_p50_s is not None
    (model,) = frame.models
    assert model.ready_replicas == 1.0 and model.kv_cache_usage == 0.42
    assert frame.budgets == {"city": 0.25}
    out = io.StringIO()
    Console(file=out, width=160).print(render(frame))
    text = out.getvalue()
    assert "per model and tenant" in text and "city" in text and "25.0%" in text and "42.0%" in text


def test_nothing_moved_no_rows():
    frame = collect(_source(FIRST), "test")  # collect scrapes once more: the same counts
    assert frame.rows == [] and frame.budgets == {"city": 0.25}


def test_promql_selectors():
    assert _selector(["ray_govllm_requests_total"], {"status": "5.."}) == 'ray_govllm_requests_total{status=~"5.."}'
    assert _selector(["vllm:x", "ray_vllm_x"]) == '{__name__=~"vllm:x|ray_vllm_x"}'
    source = PrometheusSource("http://127.0.0.1:1", "5m")
    assert source.window == "5m" and source.url == "http://127.0.0.1:1"


def test_targets_from_status():
    report = {"app": "govllm-local", "metrics_urls": ["http://10.0.0.5:8080/metrics"],
              "endpoints": {"m": [{"replica_id": "abc", "url": "http://10.0.0.5:4711", "ongoing": 0}]}}
    groups = scrape_targets(report)
    assert groups[0]["targets"] == ["10.0.0.5:8080"] and groups[0]["labels"]["govllm_component"] == "ray"
    assert groups[1] == {"targets": ["10.0.0.5:4711"], "labels": {
        "govllm_app": "govllm-local", "govllm_component": "engine", "model": "m", "replica": "abc"}}
    assert metrics_urls(groups) == ["http://10.0.0.5:8080/metrics", "http://10.0.0.5:4711/metrics"]
