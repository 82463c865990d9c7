"""Tracing on Kubernetes: the example spec with a `tracing` section, rendered by
`govllm render helm-values` and the real `helm` (tests/component/test_helm_chart.py has the rest).

The endpoint travels in serveConfigV2 to routers and engines alike; the chart opens exactly
the collector's port to the peers the operator names, and refuses to render a release whose
egress policy would silently drop every span.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from cluster.render.helm_values import HelmValuesError, helm_values, render_text
from cluster.spec.schema import load_spec
from tests.component.test_helm_chart import CHART, SITE, SPEC, helm, template

COLLECTOR = "http://otel-collector.monitoring.svc:4318/v1/traces"
PEERS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def plan_with(tmp_path, endpoint: str = COLLECTOR):
    spec, spec_dir = load_spec(SPEC)
    spec = spec.model_copy(update={"tracing": spec.tracing.model_copy(
        update={"enabled": True, "endpoint": endpoint, "sample_ratio": 0.1})})
    values = helm_values(spec, spec_dir, source="gov-cloud-example.yaml")
    path = tmp_path / "plan.yaml"
    path.write_text(render_text(values, source="gov-cloud-example.yaml"))
    return values, path


def test_the_endpoint_reaches_routers_and_engines_through_serve_config(tmp_path):
    values, _ = plan_with(tmp_path)
    assert values["plan"]["tracing"] == {"enabled": True, "endpoint": COLLECTOR, "port": 4318}
    app = yaml.safe_load(values["rayService"]["serveConfigV2"])["applications"][0]["args"]
    assert app["serving"]["tracing"]["endpoint"] == COLLECTOR
    assert app["serving"]["tracing"]["sample_ratio"] == 0.1
    engines = app["llm_configs"]
    assert engines and all(e["engine_kwargs"]["otlp_traces_endpoint"] == COLLECTOR for e in engines)
    assert all(e["runtime_env"]["env_vars"]["OTEL_TRACES_SAMPLER_ARG"] == "0.1" for e in engines)


def test_egress_opens_the_collectors_port_to_the_named_peers_only(tmp_path):
    _, plan = plan_with(tmp_path)
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"networkPolicy": {"egress": {"otlpCollector": {"to": PEERS}}}}))
    docs = template("-f", str(plan), *SITE, "-f", str(site))
    (egress,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-egress")]
    rules = [r for r in egress["spec"]["egress"] if r.get("ports") == [{"port": 4318, "protocol": "TCP"}]]
    assert rules == [{"to": PEERS, "ports": [{"port": 4318, "protocol": "TCP"}]}]


def test_a_release_that_would_drop_every_span_is_refused(tmp_path):
    _, plan = plan_with(tmp_path)
    with pytest.raises(subprocess.CalledProcessError) as failed:
        helm("template", "govllm", str(CHART), "-f", str(plan), *SITE)
    assert "networkPolicy.egress.otlpCollector.to is required" in failed.value.stderr
    # without NetworkPolicies nothing needs opening
    helm("template", "govllm", str(CHART), "-f", str(plan), *SITE, "--set", "networkPolicy.enabled=false")


def test_a_pods_loopback_is_not_a_collector(tmp_path):
    with pytest.raises(HelmValuesError, match="tracing.endpoint: a pod's loopback"):
        plan_with(tmp_path, "http://127.0.0.1:4318/v1/traces")


def test_tracing_off_renders_no_collector_rule(tmp_path):
    spec, spec_dir = load_spec(SPEC)
    assert helm_values(spec, spec_dir, source="x")["plan"]["tracing"] == {"enabled": False}
