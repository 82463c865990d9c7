"""The chart's PrometheusRule with the real promtool: `check rules`, and `test rules` with
synthetic series in which every alert both fires and stays quiet.

The rules are rendered by the real helm from the chart (metrics.prometheusRule.enabled), so
what is tested is what a cluster gets; thresholds are read from the chart's values, not
typed here. promtool comes with the Debian `prometheus` package (`make prometheus-tools`,
which `make test` runs).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.prometheus_server import CHART, NAMESPACE, render_rules, tool

ROOT = Path(__file__).resolve().parents[2]
NS = NAMESPACE
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]
MIB = 1024 * 1024


def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("rules")
    path = tmp / "rules.yml"
    path.write_text(yaml.safe_dump(render_rules(tmp), sort_keys=False))
    return path


def alerts(rules_file: Path) -> dict[str, dict]:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_check_rules(rules_file):
    proc = subprocess.run([promtool(), "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 25 rules found" in proc.stdout  # 14 recording rules, 11 alerts


def test_promtool_check_rules_can_fail(tmp_path, rules_file):
    broken = rules_file.read_text().replace("sum by (namespace, model) (rate(", "sum by (namespace, model (rate(", 1)
    path = tmp_path / "broken.yml"
    path.write_text(broken)
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "parse error" in proc.stdout + proc.stderr


def test_every_alert_has_a_runbook_entry(rules_file):
    doc = (ROOT / "docs" / "observability.md").read_text()
    for name, rule in alerts(rules_file).items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"{VALUES['runbookBaseUrl']}#{name.lower()}"
        assert f"\n### {name}\n" in doc, f"docs/observability.md has no runbook section for {name}"
        assert rule["labels"]["severity"] in ("critical", "warning")


def _series(name: str, values: str, **labels: str) -> dict:
    labels = {"namespace": NS, **labels}
    return {"series": name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def _requests(per_min: int, error_share: float, model: str = "tiny") -> list[dict]:
    """Requests per minute of one model, a share of them 5xx (and some 499s, never counted)."""
    errors = round(per_min * error_share)
    return [
        _series("ray_govllm_requests_total", f"0+{per_min - errors}x600", model=model, status="200", code="",
                tenant="city", operation="chat"),
        _series("ray_govllm_requests_total", f"0+{errors}x600", model=model, status="503", code="model_overloaded",
                tenant="city", operation="chat"),
        _series("ray_govllm_requests_total", "0+50x600", model=model, status="499", code="client_disconnected",
                tenant="city", operation="chat"),
    ]


def _ttft(per_min: int, slow_share: float, le: str, model: str = "tiny") -> list[dict]:
    """Streams per minute of one model, a share of them slower than the objective (bucket `le`)."""
    fast = round(per_min * (1 - slow_share))
    return [_series("ray_govllm_ttft_seconds_bucket", f"0+{fast}x600", model=model, tenant="city", le=le),
            _series("ray_govllm_ttft_seconds_bucket", f"0+{per_min}x600", model=model, tenant="city", le="+Inf"),
            _series("ray_govllm_ttft_seconds_count", f"0+{per_min}x600", model=model, tenant="city")]


def _humanize(fn: str, value: float) -> str:
    """Prometheus' template functions the annotations use, for the values the tests produce."""
    if fn == "humanizePercentage":
        return f"{value * 100:.4g}%"
    if fn == "humanizeDuration":
        minutes, seconds = divmod(int(value), 60)
        hours, minutes = divmod(minutes, 60)
        return (f"{hours}h " if hours else "") + f"{minutes}m {seconds}s"
    if fn == "humanize1024":
        for prefix in ("", "ki", "Mi", "Gi", "Ti"):
            if abs(value) < 1024:
                return f"{value:.4g}{prefix}"
            value /= 1024
    raise ValueError(fn)


def _annotations(rule: dict, labels: dict, value: float | None) -> dict:
    """The alert's annotations as Prometheus expands them for these labels and value."""
    out = {}
    for key, text in rule["annotations"].items():
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        text = re.sub(r"\{\{ \$value \| (\w+) \}\}", lambda m: _humanize(m.group(1), value), text)
        assert "{{" not in text, text
        out[key] = text
    return out


def _fires(name: str, at: str, rules: dict, value: float | None = None, **labels: str) -> dict:
    labels = {"namespace": NS, "severity": rules[name]["labels"]["severity"], **labels}
    return {"eval_time": at, "alertname": name, "exp_alerts": [
        {"exp_labels": labels, "exp_annotations": _annotations(rules[name], labels, value)}]}


def _quiet(name: str, at: str) -> dict:
    return {"eval_time": at, "alertname": name, "exp_alerts": []}


def rule_tests(rules: dict[str, dict]) -> list[dict]:
    slo = VALUES["slo"]
    availability_budget = 1 - slo["availability"]
    ttft_budget = 1 - slo["ttftObjective"]
    le = f"{float(slo['ttftSeconds'])}"  # Ray writes bucket bounds as floats: "2.0"
    budget, audit = VALUES["budget"], VALUES["audit"]
    model = {"model": "tiny"}

    tests = [
        # errors at 20x the budget's rate: the fast pair fires; the slow pair too (3x over 2h / 1d)
        {"interval": "1m", "input_series": _requests(600, 20 * availability_budget),
         "alert_rule_test": [
             _fires("GovllmErrorBudgetBurnFast", "70m", rules, **model),
             _fires("GovllmErrorBudgetBurnSlow", "130m", rules, **model)]},
        # errors at 4x: not fast (below 6x), but slow (above 3x over 2h and a day)
        {"interval": "1m", "input_series": _requests(600, 4 * availability_budget),
         "alert_rule_test": [
             _quiet("GovllmErrorBudgetBurnFast", "130m"),
             _fires("GovllmErrorBudgetBurnSlow", "130m", rules, **model)]},
        # errors within budget (half its rate): neither; nor does a flood of 499s count
        {"interval": "1m", "input_series": _requests(600, 0.5 * availability_budget),
         "alert_rule_test": [_quiet("GovllmErrorBudgetBurnFast", "130m"),
                             _quiet("GovllmErrorBudgetBurnSlow", "400m")]},
        {"interval": "1m", "input_series": _ttft(600, 20 * ttft_budget, le),
         "alert_rule_test": [
             _fires("GovllmTTFTBudgetBurnFast", "70m", rules, **model),
             _fires("GovllmTTFTBudgetBurnSlow", "130m", rules, **model)]},
        # the objective's bucket written as Prometheus 3 normalises it ("2" rather than "2.0")
        {"interval": "1m", "input_series": _ttft(600, 20 * ttft_budget, le.removesuffix(".0")),
         "alert_rule_test": [
             _fires("GovllmTTFTBudgetBurnFast", "70m", rules, **model)]},
        {"interval": "1m", "input_series": _ttft(600, 4 * ttft_budget, le),
         "alert_rule_test": [
             _quiet("GovllmTTFTBudgetBurnFast", "130m"),
             _fires("GovllmTTFTBudgetBurnSlow", "130m", rules, **model)]},
        {"interval": "1m", "input_series": _ttft(600, 0.5 * ttft_budget, le),
         "alert_rule_test": [_quiet("GovllmTTFTBudgetBurnFast", "130m"),
                             _quiet("GovllmTTFTBudgetBurnSlow", "400m")]},
        # budgets: two routers report the same tenant; one nearly spent, one spent, one fine
        {"interval": "1m", "input_series": [
            _series("ray_govllm_budget_used_ratio", f"{budget['warningRatio'] + 0.05}x20", tenant="near", WorkerId="a"),
            _series("ray_govllm_budget_used_ratio", f"{budget['warningRatio'] + 0.05}x20", tenant="near", WorkerId="b"),
            _series("ray_govllm_budget_used_ratio", f"{budget['criticalRatio']}x20", tenant="spent", WorkerId="a"),
            _series("ray_govllm_budget_used_ratio", f"{budget['warningRatio'] / 2}x20", tenant="fine", WorkerId="a")],
         "alert_rule_test": [
             _fires("GovllmTenantBudgetNearlySpent", "10m", rules, budget["warningRatio"] + 0.05, tenant="near"),
             _fires("GovllmTenantBudgetSpent", "10m", rules, tenant="spent")]},
        {"interval": "1m", "input_series": [
            _series("ray_govllm_budget_used_ratio", f"{budget['warningRatio'] / 2}x20", tenant="fine")],
         "alert_rule_test": [_quiet("GovllmTenantBudgetNearlySpent", "10m"),
                             _quiet("GovllmTenantBudgetSpent", "10m")]},
        # the audit spool: a node whose oldest record is past the limit, growing past the size
        {"interval": "1m", "input_series": [
            _series("ray_govllm_audit_oldest_pending_age_seconds",
                    f"{audit['maxUploadLagSeconds'] - 300}+60x60", NodeAddress="10.0.0.1"),
            _series("ray_govllm_audit_spool_bytes", f"{audit['spoolBytes']}+{MIB}x60", NodeAddress="10.0.0.1")],
         "alert_rule_test": [
             _quiet("GovllmAuditUploadLagging", "3m"),
             _fires("GovllmAuditUploadLagging", "20m", rules, audit["maxUploadLagSeconds"] - 300 + 20 * 60),
             _fires("GovllmAuditSpoolGrowing", "50m", rules, audit["spoolBytes"] + 50 * MIB,
                    NodeAddress="10.0.0.1")]},
        # large but drained (not growing), and small but growing: neither is a spool problem
        {"interval": "1m", "input_series": [
            _series("ray_govllm_audit_oldest_pending_age_seconds", "5x60", NodeAddress="10.0.0.1"),
            _series("ray_govllm_audit_spool_bytes", f"{audit['spoolBytes'] * 2}-{MIB}x60", NodeAddress="10.0.0.1"),
            _series("ray_govllm_audit_spool_bytes", f"{MIB}+{MIB}x60", NodeAddress="10.0.0.2")],
         "alert_rule_test": [_quiet("GovllmAuditUploadLagging", "50m"),
                             _quiet("GovllmAuditSpoolGrowing", "50m")]},
        # replicas: a model no router can reach; another one router still reaches
        {"interval": "1m", "input_series": [
            _series("ray_govllm_router_ready_replicas", "0x10", model="gone", router="r1"),
            _series("ray_govllm_router_ready_replicas", "0x10", model="gone", router="r2"),
            _series("ray_govllm_router_ready_replicas", "0x10", model="half", router="r1"),
            _series("ray_govllm_router_ready_replicas", "1x10", model="half", router="r2")],
         "alert_rule_test": [
             _quiet("GovllmModelNoReadyReplica", "1m"),
             _fires("GovllmModelNoReadyReplica", "5m", rules, model="gone"),
             _quiet("GovllmRouterMetricsAbsent", "10m")]},
        {"interval": "1m", "input_series": [
            _series("ray_govllm_quota_store_up", "1x10", router="r1"),
            _series("ray_govllm_quota_store_up", "1 1 1 0 0 0 0 0 0 0", router="r2")],
         "alert_rule_test": [
             _quiet("GovllmQuotaStoreDown", "3m"),
             _fires("GovllmQuotaStoreDown", "6m", rules)]},
        {"interval": "1m", "input_series": [_series("ray_govllm_quota_store_up", "1x10")],
         "alert_rule_test": [_quiet("GovllmQuotaStoreDown", "10m")]},
        # nothing reports (or only another release's namespace does): absent
        {"interval": "1m", "input_series": [
            {"series": 'ray_govllm_router_ready_replicas{namespace="staging", model="tiny"}', "values": "1x20"}],
         "alert_rule_test": [_quiet("GovllmRouterMetricsAbsent", "5m"),
                             _fires("GovllmRouterMetricsAbsent", "12m", rules)]},
    ]
    # a model with traffic and no 5xx at all has an error ratio of 0, not none (dashboards, alerts)
    tests.append({"interval": "1m", "input_series": [
        _series("ray_govllm_requests_total", "0+60x20", model="tiny", status="200", code="", tenant="city",
                operation="chat")],
        "promql_expr_test": [{"expr": "govllm:request_errors:ratio_rate5m", "eval_time": "10m", "exp_samples": [
            {"labels": f'govllm:request_errors:ratio_rate5m{{namespace="{NS}", model="tiny"}}', "value": 0}]}]})
    return tests


def test_promtool_test_rules_every_alert_fires_and_stays_quiet(tmp_path, rules_file):
    rules = alerts(rules_file)
    tests = rule_tests(rules)
    fired = {t["alertname"] for g in tests for t in g.get("alert_rule_test", []) if t["exp_alerts"]}
    quiet = {t["alertname"] for g in tests for t in g.get("alert_rule_test", []) if not t["exp_alerts"]}
    assert fired == set(rules) == quiet, (set(rules) - fired, set(rules) - quiet)
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m",
                                         "tests": tests}, sort_keys=False))
    proc = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules_can_fail(tmp_path, rules_file):
    """A wrong expectation fails: the rule tests above are not vacuous."""
    test_file = tmp_path / "wrong_test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": [_series("ray_govllm_quota_store_up", "1x10")],
         "alert_rule_test": [_fires("GovllmQuotaStoreDown", "10m", alerts(rules_file))]}]}))
    proc = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True)
    assert proc.returncode != 0 and "GovllmQuotaStoreDown" in proc.stdout + proc.stderr


def test_thresholds_come_from_values(tmp_path):
    """A changed value changes the rendered expression (nothing is typed twice)."""
    spec = render_rules(tmp_path, "metrics.prometheusRule.slo.ttftSeconds=0.5",
                        "metrics.prometheusRule.budget.warningRatio=0.9",
                        "metrics.prometheusRule.audit.spoolBytes=1073741824")
    exprs = "\n".join(r["expr"] for g in spec["groups"] for r in g["rules"])
    assert 'le=~"0.5(\\\\.0)?"' in exprs and ">= 0.9" in exprs and "> 1073741824" in exprs


def test_slo_threshold_must_be_a_bucket(tmp_path):
    with pytest.raises(AssertionError, match="ttftSeconds"):
        render_rules(tmp_path, "metrics.prometheusRule.slo.ttftSeconds=2.2")
