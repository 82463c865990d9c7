"""The metrics against a real Prometheus scraping the running stack.

A Prometheus (the Debian package's binary) on 127.0.0.1 scrapes what `govllm metrics targets`
lists for the stack (Ray's metrics port: router and Serve metrics; each model replica's
data plane: vLLM's), with the `namespace` label the Prometheus operator adds on Kubernetes,
and loads the chart's rendered PrometheusRule. After a little traffic (streams, a plain
answer, an embedding, a refused key, a quota refusal), every query of every dashboard panel
must parse and return series, every recording and alerting rule must evaluate without error
and stay quiet on the healthy stack, and `govllm top` must show the traffic, read from this
Prometheus and straight from the endpoints.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.prometheus_server import NAMESPACE, PrometheusServer, render_rules
from tests.stack import GOVLLM
from tools.render_dashboards import DASHBOARDS, draw, expand, panels

pytestmark = pytest.mark.integration

PROMPT = "計測のための問い合わせです: 住民票の写しの交付手続を教えてください"
BOGUS_MODEL = "a-model-name-nobody-declared-7f3a"
RATE = "1m"


def _chat(stack, key: str, *, model: str = "default", stream: bool = True, max_tokens: int = 8) -> httpx.Response:
    return httpx.post(stack.base_url + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "stream": stream, "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": PROMPT}]})


#: Requests answered (200) per model of the dev tenant: the first round plus the traffic.
ANSWERED = {"tiny-llama-ja": 2 + 4, "tiny-qwen2-ja": 1 + 1, "tiny-embed-ja": 1 + 1}


def _first_of_each(stack) -> dict:
    """Requests of each kind, so their series exist (on both routers, mostly) before the traffic.

    Prometheus sees a counter series first when Ray exports it (every 10 s) and counts no
    increase into its first sample, so a burst that creates a series shows no rate."""
    assert _chat(stack, stack.api_key).status_code == 200
    assert _chat(stack, stack.api_key).status_code == 200
    assert _chat(stack, stack.api_key, model="tiny-qwen2-ja", stream=False).status_code == 200
    assert httpx.post(stack.base_url + "/v1/embeddings", timeout=60,
                      headers={"Authorization": f"Bearer {stack.api_key}"},
                      json={"model": "tiny-embed-ja", "input": PROMPT}).status_code == 200
    key, _ = stack.new_key("metrics-town")
    town = [_chat(stack, key).status_code for _ in range(2)]  # one a minute: answered, then refused
    if 429 not in town:  # the minute turned between the two
        town.append(_chat(stack, key).status_code)
    assert 200 in town and 429 in town, town
    return {"key": key}


def _traffic(stack, key: str) -> None:
    """Answered streams and a plain answer, an embedding, refusals."""
    statuses = [_chat(stack, stack.api_key).status_code for _ in range(4)]
    statuses.append(_chat(stack, stack.api_key, model="tiny-qwen2-ja", stream=False).status_code)
    statuses.append(httpx.post(stack.base_url + "/v1/embeddings", timeout=60,
                               headers={"Authorization": f"Bearer {stack.api_key}"},
                               json={"model": "tiny-embed-ja", "input": PROMPT}).status_code)
    assert statuses == [200] * 6
    assert _chat(stack, "gvk_000000000000_not-a-key").status_code == 401
    assert _chat(stack, stack.api_key, model=BOGUS_MODEL).status_code == 404
    town = [_chat(stack, key).status_code for _ in range(2)]
    assert 429 in town, town


@pytest.fixture(scope="module")
def observed(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    raw = tmp / "targets-raw.json"
    stack.cli("metrics", "targets", "--output", str(raw))
    groups = json.loads(raw.read_text())
    assert {g["labels"]["govllm_component"] for g in groups} == {"ray", "engine"}
    for group in groups:  # what the Prometheus operator adds to what a ServiceMonitor scrapes
        group["labels"]["namespace"] = NAMESPACE
    targets = tmp / "targets.json"
    targets.write_text(json.dumps(groups))
    rules = tmp / "rules.yml"
    rules.write_text(yaml.safe_dump(render_rules(tmp)))
    prometheus = PrometheusServer(tmp, targets, rule_files=[rules])
    started = time.time()
    assert prometheus.wait_for("ray_govllm_router_ready_replicas"), "no router metrics in 40 s"
    before = _answered(prometheus)  # what earlier tests of the session left
    sent = _first_of_each(stack)
    assert prometheus.wait_for('ray_govllm_requests_total{tenant="metrics-town"}'), "no router series in 40 s"
    # `govllm top` scraping the endpoints itself: two scrapes 15 s apart, the traffic right
    # after the first (Ray exports every 10 s, so the second scrape sees it)
    direct = subprocess.Popen([GOVLLM, "top", "--once", "--json", "--interval", "15", "--window", "1m",
                               "--spec", str(stack.spec_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "the next scrape in" not in direct.stderr.readline():
            assert direct.poll() is None and time.monotonic() < deadline, "govllm top did not scrape"
        _traffic(stack, sent["key"])
        # every router exports on its own 10 s beat; the budget is read every 15 s
        deadline = time.monotonic() + 60
        while not (all(_answered(prometheus).get(m, 0) - before.get(m, 0) >= n for m, n in ANSWERED.items())
                   and prometheus.query('sum(ray_govllm_quota_rejections_total{tenant="metrics-town"}) >= 2 '
                                        'and on () max(ray_govllm_budget_used_tokens{tenant="metrics-town"}) > 0')):
            assert time.monotonic() < deadline, f"the traffic did not reach Prometheus in 60 s: {_answered(prometheus)}"
            time.sleep(1)
        out, err = direct.communicate(timeout=60)
        assert direct.returncode == 0, err
        yield {"prometheus": prometheus, "started": started, "direct": json.loads(out), "sent": sent,
               "rules": rules, "tmp": tmp, "before": before}
    finally:
        if direct.poll() is None:
            direct.kill()
        prometheus.stop()


def test_every_dashboard_panel_query_returns_series(observed):
    prometheus = observed["prometheus"]
    empty, checked = [], 0
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard):
            for target in panel["targets"]:
                result = prometheus.query(expand(target["expr"], RATE))  # raises if it does not parse
                checked += 1
                if not result:
                    empty.append(f"{dashboard['uid']}: {panel['title']}: {target['expr']}")
    assert checked > 40  # the four dashboards' queries
    assert empty == []


def _values(prometheus: PrometheusServer, promql: str) -> dict[str, float]:
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in prometheus.query(promql)}


def _answered(prometheus: PrometheusServer) -> dict[str, float]:
    return {r["metric"]["model"]: float(r["value"][1]) for r in prometheus.query(
        'sum by (model) (ray_govllm_requests_total{tenant="dev-local", status="200"})')}


def test_the_traffic_shows_in_the_panels_numbers(observed):
    """Not only series: the counts are the traffic's (every answered request counted, by model)."""
    p = observed["prometheus"]
    answered = _answered(p)
    for model, n in ANSWERED.items():
        assert answered[model] - observed["before"].get(model, 0) >= n, (model, answered)
    ttft = list(_values(p, 'histogram_quantile(0.99, sum by (le) (ray_govllm_ttft_seconds_bucket'
                           '{model="tiny-llama-ja"}))').values())
    assert ttft and 0 < ttft[0] < 60
    codes = {json.loads(k).get("code", "") for k in _values(p, "sum by (code) (ray_govllm_requests_total)")}
    assert {"", "invalid_api_key", "model_not_found", "requests_per_minute_exceeded"} <= codes  # "": answered
    budget = list(_values(p, 'max(ray_govllm_budget_used_ratio{tenant="metrics-town"})').values())
    assert budget and 0 < budget[0] < 1
    kv = _values(p, 'max by (model_name) ({__name__=~"vllm:kv_cache_usage_perc|ray_vllm_kv_cache_usage_perc"})')
    assert {json.loads(k)["model_name"] for k in kv} >= {"tiny-llama-ja", "tiny-qwen2-ja"}
    records = list(_values(p, "sum(ray_govllm_audit_records_total)").values())
    assert records and records[0] > 0
    ready = _values(p, "min by (model) (ray_govllm_router_ready_replicas)")
    assert ready and all(v == 1 for v in ready.values())


def test_labels_are_bounded_and_carry_no_text(observed, stack):
    """Tenants and models are the spec's (or one collapsed value); nothing a client sent is a label."""
    p = observed["prometheus"]
    series = p.api("series", **{"match[]": '{__name__=~"ray_govllm_.*"}', "start": str(observed["started"])})
    assert series
    spec = stack.spec
    tenants = {t["id"] for t in spec["tenants"]} | {"unauthenticated", "unknown"}
    models = {m["id"] for m in spec["models"]} | {"none"}
    secrets = [PROMPT, BOGUS_MODEL, stack.api_key, observed["sent"]["key"]]
    for s in series:
        assert s.get("tenant", "unauthenticated") in tenants, s
        assert s.get("model", "none") in models, s
        for value in s.values():
            assert not any(secret in value for secret in secrets), s


def test_rules_evaluate_and_stay_quiet_on_a_healthy_stack(observed):
    p = observed["prometheus"]
    time.sleep(2)  # a couple of evaluation rounds after the traffic
    groups = p.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 25
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert broken == []
    # Quiet, except where an alert is right: other tests of the suite spend some tenants'
    # monthly budgets on purpose, and the budget alerts must then be pending for exactly those.
    active = [a for a in p.api("alerts")["alerts"] if a["state"] != "inactive"]
    budget = {s["metric"]["tenant"]: float(s["value"][1])
              for s in p.query("max by (tenant) (ray_govllm_budget_used_ratio)")}
    unexplained = [(a["labels"]["alertname"], a["labels"].get("tenant"), a["state"]) for a in active
                   if not (a["labels"]["alertname"].startswith("GovllmTenantBudget")
                           and a["labels"].get("tenant") != "metrics-town"
                           and budget.get(a["labels"].get("tenant"), 0.0) >= 0.8)]
    assert unexplained == []
    # the recording rules see the traffic (the selectors match the scraped labels)
    errors = p.query('govllm:request_errors:ratio_rate5m{model="tiny-llama-ja"}')
    assert errors and float(errors[0]["value"][1]) == 0.0
    slow = p.query('govllm:ttft_slow:ratio_rate5m{model="tiny-llama-ja"}')
    assert slow and float(slow[0]["value"][1]) == 0.0
    for r in rules:  # and each expression alone parses against this data
        p.query(r["query"])


def _row(frame: dict, model: str, tenant: str) -> dict:
    rows = [r for r in frame["rows"] if r["model"] == model and r["tenant"] == tenant]
    assert rows, f"no row for {model}/{tenant} in {frame['rows']}"
    return rows[0]


def test_top_reads_prometheus(observed, stack):
    url = observed["prometheus"].url
    out = stack.cli("top", "--once", "--json", "--prometheus", url, "--window", "5m")
    frame = json.loads(out.stdout)
    row = _row(frame, "tiny-llama-ja", "dev-local")
    assert row["requests_per_s"] > 0 and row["completion_tokens_per_s"] > 0
    assert 0 < row["ttft_p50_s"] <= row["ttft_p99_s"] < 60
    assert 0 < frame["budgets"]["metrics-town"] < 1
    models = {m["model"]: m for m in frame["models"]}
    assert set(models) >= {"tiny-llama-ja", "tiny-qwen2-ja", "tiny-embed-ja"}
    assert models["tiny-llama-ja"]["ready_replicas"] == 1 and models["tiny-llama-ja"]["kv_cache_usage"] is not None
    table = stack.cli("top", "--once", "--prometheus", url, "--window", "5m").stdout
    assert "per model and tenant" in table and "tiny-llama-ja" in table and "metrics-town" in table


def test_top_scrapes_the_endpoints_directly(observed):
    frame = observed["direct"]
    assert frame["source"].endswith("metrics endpoints")
    row = _row(frame, "tiny-llama-ja", "dev-local")
    assert row["requests_per_s"] > 0 and row["prompt_tokens_per_s"] > 0
    assert row["ttft_p99_s"] is not None and math.isfinite(row["ttft_p99_s"])
    models = {m["model"]: m for m in frame["models"]}
    assert models["tiny-llama-ja"]["kv_cache_usage"] is not None  # vLLM's own, from the data plane


def test_dashboard_pictures_render_from_this_data(observed):
    """tools/render_dashboards.py (docs/observability.md's pictures) draws every dashboard."""
    out = observed["tmp"] / "img"
    for path in sorted(DASHBOARDS.glob("*.json")):
        png = draw(json.loads(path.read_text()), observed["prometheus"].url, observed["started"], time.time(), out)
        assert png.stat().st_size > 20_000
    assert len(list(Path(out).glob("*.png"))) == 4
