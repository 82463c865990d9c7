"""The chart's Grafana dashboards and PrometheusRule, rendered by the real helm.

The dashboards' queries run against a real Prometheus in tests/integration/test_prometheus.py
and the rules in tests/unit/test_prometheus_rules.py; here: the committed JSON is the
generator's, every panel has queries and a sane place on the grid, the ConfigMaps carry the
sidecar's label and the dashboards unchanged, and the switches and the schema behave.
"""

from __future__ import annotations

import json

import pytest
import yaml

from serving.router.metrics.recorder import TTFT_BUCKETS
from tests.prometheus_server import CHART, render_chart
from tools.grafana_dashboards import DASHBOARDS, rendered

DASHBOARD_DIR = CHART / "dashboards"


def test_committed_dashboards_are_the_generators():
    files = rendered()
    assert sorted(files) == sorted(p.name for p in DASHBOARD_DIR.glob("*.json")), \
        "run python tools/grafana_dashboards.py"
    for name, text in files.items():
        assert (DASHBOARD_DIR / name).read_text() == text, f"{name}: run python tools/grafana_dashboards.py"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_panel_has_queries_on_the_grid(uid):
    dashboard = json.loads((DASHBOARD_DIR / f"{uid}.json").read_text())
    assert dashboard["uid"] == uid and dashboard["title"].startswith("govllm")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    ids, cells = set(), set()
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] >= 1
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]
            for var in ("$model", "$tenant"):  # a panel filters only by a variable its dashboard has
                if var in target["expr"]:
                    assert var[1:] in variables, (panel["title"], var)


def test_dashboards_render_into_configmaps_for_the_sidecar(tmp_path):
    docs = render_chart(tmp_path, 'metrics.grafanaDashboard.annotations={"grafana_folder": "govllm"}',
                        show="templates/grafana-dashboard.yaml")
    assert [d["kind"] for d in docs] == ["ConfigMap"] * len(DASHBOARDS)
    seen = {}
    for cm in docs:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "govllm"}
        ((name, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((DASHBOARD_DIR / name).read_text())
        seen[name] = cm["metadata"]["name"]
    assert sorted(seen) == sorted(f"{uid}.json" for uid in DASHBOARDS)
    assert len(set(seen.values())) == len(seen)


def test_rules_and_dashboards_are_off_by_default(tmp_path):
    values = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]
    assert not values["prometheusRule"]["enabled"] and not values["grafanaDashboard"]["enabled"]
    assert not values["serviceMonitor"]["enabled"]
    for template in ("templates/prometheusrule.yaml", "templates/grafana-dashboard.yaml"):
        with pytest.raises(AssertionError, match="could not find template"):
            render_chart(tmp_path, show=template, enable=False)
    (rule,) = render_chart(tmp_path, show="templates/prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"


def test_the_schema_knows_the_routers_ttft_buckets():
    """The SLO threshold must be a bucket bound (the rule reads that bucket); one list of them."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    ttft = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["slo"]["properties"]
    assert ttft["ttftSeconds"]["enum"] == list(TTFT_BUCKETS)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]
    assert values["slo"]["ttftSeconds"] in TTFT_BUCKETS


def _notes(tmp_path, *sets: str) -> str:
    import subprocess

    from tests.prometheus_server import HELM, render_chart

    render_chart(tmp_path)  # writes the example plan
    args = [str(HELM), "install", "--dry-run=client", "govllm", str(CHART), "--namespace", "govllm",
            "-f", str(tmp_path / "plan.yaml"), "--set", "dataPlane.existingSecret=govllm-data-plane",
            "--set", "vendorCA.existingConfigMap=govllm-vendor-ca"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_say_what_is_monitored(tmp_path):
    on = _notes(tmp_path, "metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
                "metrics.grafanaDashboard.enabled=true")
    assert f"PrometheusRule (alerts, runbooks: docs/observability.md), {len(DASHBOARDS)} Grafana dashboards" in on
    assert "govllm top --prometheus" in on and "NOTE: metrics.prometheusRule" not in on
    alone = _notes(tmp_path, "metrics.prometheusRule.enabled=true")
    assert "NOTE: metrics.prometheusRule is on and metrics.serviceMonitor off" in alone
    assert "Metrics:" not in _notes(tmp_path)
