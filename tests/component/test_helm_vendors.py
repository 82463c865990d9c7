"""The chart's vendor-hosted model endpoints (spec `models[].source.endpoint`, issue 12).

Rendered like tests/component/test_helm_chart.py does it: the real `govllm render helm-values` on
cluster/specs/gov-cloud-example.yaml (which declares two vendor APIs and one in-cluster
engine) and the real `helm template`; the NetworkPolicies evaluated flow by flow with that
module's evaluator. Checked: each vendor key comes from its existing Secret and its value
appears nowhere, the egress policy opens exactly the declared peers and ports and nothing
else, the CA ConfigMap is mounted read-only where routers run, and what is refused.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.render.helm_values import VENDOR_CA_DIR
from cluster.spec.schema import load_spec
from tests.component.test_helm_chart import (
    CHART,
    DATA_PLANE_SECRET,
    SITE,
    SPEC,
    VENDOR_CA_CONFIGMAP,
    connects,
    helm,
    init_containers,
    of_kind,
    pod,
    pod_specs,
    ray_containers,
    rayservice,
    release_pods,
    template,
    value_args,
)

GOVLLM = Path(sys.executable).parent / "govllm"
#: What a key looks like if it leaks: set in the environment of every render below, under
#: every credential variable the spec names, as an operator's shell might have it.
LEAK = "sk-vendor-key-that-must-never-be-rendered-7f3a9c"


@pytest.fixture(scope="module")
def spec():
    return load_spec(SPEC)[0]


@pytest.fixture(scope="module")
def vendors(spec):
    vendors = spec.endpoints()
    # the example exercises both kinds of egress and both kinds of trust
    assert any(m.source.endpoint.egress.cidrs for m in vendors)
    assert any(m.source.endpoint.egress.namespace for m in vendors)
    assert any(m.source.endpoint.ca_bundle for m in vendors)
    assert any(m.source.endpoint.ca_bundle is None for m in vendors)
    return vendors


def leaky_env(spec) -> dict[str, str]:
    env = dict(os.environ)
    for m in spec.endpoints():
        if m.source.endpoint.credential_env:
            env[m.source.endpoint.credential_env] = LEAK
    return env


def render_values(spec_path: Path, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(GOVLLM), "render", "helm-values", "--spec", str(spec_path), "-o", str(out)],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory, spec) -> Path:
    """The generated values, by the real CLI, with every vendor key in its environment."""
    path = tmp_path_factory.mktemp("vendors") / "plan.yaml"
    proc = render_values(SPEC, path, leaky_env(spec))
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def no_vendor_plan(plan_file, tmp_path_factory) -> Path:
    """The same plan without its vendor endpoints: what the chart renders for the rest."""
    values = yaml.safe_load(plan_file.read_text())
    values["plan"]["vendors"] = []
    path = tmp_path_factory.mktemp("vendors") / "plan-no-vendors.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def rendered(plan_file, spec) -> dict[str, str]:
    """Raw `helm template` output (default and AWS), rendered with the keys in the environment."""
    out = {}
    for variant in ("default", "aws"):
        proc = subprocess.run([str(Path(sys.executable).parent / "helm"), "template", "govllm",
                               str(CHART), "--namespace", "govllm", *value_args(plan_file, variant)],
                              capture_output=True, text=True, timeout=60, env=leaky_env(spec),
                              check=True)
        out[variant] = proc.stdout
    return out


def docs_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def egress_rules(docs: list[dict]) -> list[dict]:
    (policy,) = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-egress")]
    return policy["spec"]["egress"]


# --- credentials -------------------------------------------------------------------------------

def test_vendor_keys_come_from_their_secrets_and_appear_nowhere(plan_file, rendered, vendors):
    assert LEAK not in plan_file.read_text()
    keyed = [m for m in vendors if m.source.endpoint.credential_env]
    assert keyed
    for variant, text in rendered.items():
        assert LEAK not in text, variant
        rs = rayservice(docs_of(text))
        for c in ray_containers(rs):
            env = [e for e in c["env"]]
            for m in keyed:
                ep = m.source.endpoint
                entries = [e for e in env if e["name"] == ep.credential_env]
                assert entries == [{"name": ep.credential_env, "valueFrom": {"secretKeyRef": {
                    "name": ep.secret.name, "key": ep.secret.key}}}], (variant, c["name"], m.id)
        for c in init_containers(rs):  # weight staging never holds a vendor key
            names = {e["name"] for e in c["env"]}
            assert not names & {m.source.endpoint.credential_env for m in keyed}, c["name"]


def test_a_variable_shared_by_two_models_must_name_one_secret_key(plan_file, tmp_path):
    values = yaml.safe_load(plan_file.read_text())
    keyed = [v for v in values["plan"]["vendors"] if "credentialEnv" in v]
    # two models of one vendor, one key: the variable is set once
    twin = copy.deepcopy(keyed[0])
    twin["model"] = "second-model-of-the-same-vendor"
    values["plan"]["vendors"].append(twin)
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(values))
    for c in ray_containers(rayservice(template("-f", str(same), *SITE))):
        assert [e["name"] for e in c["env"]].count(twin["credentialEnv"]) == 1
    # the same variable from another Secret: refused, naming both
    twin["secret"] = {"name": "another-secret", "key": "api-key"}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(values))
    proc = helm("template", "x", str(CHART), "-f", str(other), *SITE, check=False)
    assert proc.returncode != 0
    assert f"{twin['credentialEnv']} is read from Secret key" in proc.stderr, proc.stderr
    assert "another-secret/api-key" in proc.stderr


# --- egress -------------------------------------------------------------------------------------

def test_egress_adds_exactly_one_rule_per_vendor_and_changes_nothing_else(rendered, no_vendor_plan, vendors):
    with_vendors = docs_of(rendered["default"])
    without = template(*value_args(no_vendor_plan, "default"))
    rules, base = egress_rules(with_vendors), egress_rules(without)
    assert rules[:len(base)] == base
    added = rules[len(base):]
    assert len(added) == len(vendors)
    for rule, m in zip(added, vendors, strict=True):
        ep = m.source.endpoint
        peers = [{"ipBlock": {"cidr": c}} for c in ep.egress.cidrs]
        if ep.egress.namespace:
            peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ep.egress.namespace}}}
            if ep.egress.pod_labels:
                peer["podSelector"] = {"matchLabels": ep.egress.pod_labels}
            peers.append(peer)
        assert rule == {"to": peers, "ports": [{"port": ep.port, "protocol": "TCP"}]}, m.id
    assert f"# vendor endpoint of model {vendors[0].id}: {vendors[0].source.endpoint.host}" in rendered["default"]
    # every other policy, and every other object but the RayService and the egress policy, as before
    def others(docs):
        return [d for d in docs if d["kind"] != "RayService" and not d["metadata"]["name"].endswith("-egress")]
    assert others(with_vendors) == others(without)


def host_in(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))


def host_after(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr).broadcast_address + 1)


def test_ray_pods_reach_the_declared_vendor_addresses_and_ports_only(rendered, no_vendor_plan, vendors):
    policies = of_kind(docs_of(rendered["default"]), "NetworkPolicy")
    plain = of_kind(template(*value_args(no_vendor_plan, "default")), "NetworkPolicy")
    pods = release_pods(rayservice(docs_of(rendered["default"])))
    assert len(pods) >= 2
    for m in vendors:
        ep = m.source.endpoint
        targets, strays = [], []
        for cidr in ep.egress.cidrs:
            targets.append(pod("vendor", {}, host_in(cidr)))
            strays.append(pod("vendor", {}, host_after(cidr)))  # the next address: not declared
        if ep.egress.namespace:
            labels = dict(ep.egress.pod_labels)
            targets.append(pod(ep.egress.namespace, labels, "10.244.9.9"))
            strays += [pod(ep.egress.namespace, {"app": "something-else"}, "10.244.9.10"),
                       pod("elsewhere", labels, "10.244.9.11")]  # the labels, another namespace
        for src in pods.values():
            for dst in targets:
                assert connects(policies, src, dst, ep.port), (m.id, dst)
                assert not connects(plain, src, dst, ep.port), (m.id, dst)  # opened by the rule
                for port in (22, 80, 6379, ep.port + 1):
                    assert not connects(policies, src, dst, port), (m.id, dst, port)
            for dst in strays:
                assert not connects(policies, src, dst, ep.port), (m.id, dst)
    # an address no vendor declared stays closed on every vendor port
    nowhere = pod("elsewhere", {}, "192.0.2.10")
    for src in pods.values():
        assert not any(connects(policies, src, nowhere, m.source.endpoint.port) for m in vendors)


def test_the_vendor_flow_checks_can_fail(rendered, vendors):
    """A rule widened to any port is caught by the checks above."""
    docs = docs_of(rendered["default"])
    rules = egress_rules(docs)
    del rules[-1]["ports"]
    policies = of_kind(docs, "NetworkPolicy")
    src = next(iter(release_pods(rayservice(docs)).values()))
    ep = vendors[-1].source.endpoint
    dst = pod(ep.egress.namespace, dict(ep.egress.pod_labels), "10.244.9.9")
    assert connects(policies, src, dst, ep.port + 1)


# --- CA bundles ---------------------------------------------------------------------------------

def test_vendor_ca_configmap_is_mounted_read_only_on_every_ray_container(rendered, vendors):
    bundles = {m.source.endpoint.ca_bundle for m in vendors} - {None}
    assert bundles and all(Path(b).parent == Path(VENDOR_CA_DIR) for b in bundles)
    for variant, text in rendered.items():
        rs = rayservice(docs_of(text))
        for spec_ in pod_specs(rs):
            volumes = {v["name"]: v for v in spec_["volumes"]}
            for c in spec_["containers"]:
                (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == VENDOR_CA_DIR]
                assert mount["readOnly"] is True, (variant, c["name"])
                assert volumes[mount["name"]] == {"name": mount["name"],
                                                  "configMap": {"name": VENDOR_CA_CONFIGMAP}}
            for c in spec_.get("initContainers", []):
                assert VENDOR_CA_DIR not in {m["mountPath"] for m in c["volumeMounts"]}


def test_no_ca_configmap_no_release(plan_file, vendors):
    """A vendor trusting a private CA needs vendorCA.existingConfigMap; the refusal says how."""
    files = [Path(m.source.endpoint.ca_bundle).name for m in vendors if m.source.endpoint.ca_bundle]
    for command in (["template", "govllm", str(CHART)], ["install", "govllm", str(CHART), "--dry-run=client"]):
        proc = helm(*command, "--namespace", "prod-llm", "-f", str(plan_file),
                    "--set", f"dataPlane.existingSecret={DATA_PLANE_SECRET}", check=False)
        assert proc.returncode != 0, command
        out = proc.stdout + proc.stderr
        assert "vendorCA.existingConfigMap is required" in out, out
        command_line = "kubectl -n prod-llm create configmap govllm-vendor-ca " + " ".join(
            f"--from-file={f}=<PEM file>" for f in files)
        assert command_line in out, out


def test_without_ca_bundles_nothing_is_mounted(no_vendor_plan):
    docs = template("-f", str(no_vendor_plan), "--set", f"dataPlane.existingSecret={DATA_PLANE_SECRET}")
    for c in ray_containers(rayservice(docs)):
        assert VENDOR_CA_DIR not in {m["mountPath"] for m in c["volumeMounts"]}
    # a site's ConfigMap is still mounted when given (a bundle for endpoints added later)
    docs = template("-f", str(no_vendor_plan), *SITE)
    for c in ray_containers(rayservice(docs)):
        assert VENDOR_CA_DIR in {m["mountPath"] for m in c["volumeMounts"]}


# --- refusals -----------------------------------------------------------------------------------

def spec_variant(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(SPEC.read_text())
    change({m["id"]: m for m in data["models"]})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda ms: ms["plamo-2.0-prime"]["source"]["endpoint"].pop("egress"),
     "models[plamo-2.0-prime].source.endpoint.egress"),
    (lambda ms: ms["sarashina2-mini"]["source"]["endpoint"].pop("secret"),
     "models[sarashina2-mini].source.endpoint.secret"),
    (lambda ms: ms["plamo-2.0-prime"]["source"]["endpoint"].update(ca_bundle="/opt/ca/pfn.pem"),
     "models[plamo-2.0-prime].source.endpoint.ca_bundle"),
])
def test_render_refuses_a_vendor_the_chart_cannot_run(tmp_path, change, message):
    proc = render_values(spec_variant(tmp_path, change), tmp_path / "plan.yaml")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "plan.yaml").exists()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda v: v.pop("secret"), "at '/plan/vendors/0': properties 'secret' required"),
    (lambda v: v["egress"].update(to=[]), "/plan/vendors/0/egress/to"),
    (lambda v: v.update(caBundle="/etc/ssl/certs/ca.pem"), "/plan/vendors/0/caBundle"),
    (lambda v: v.update(apiKey="inline"), "additional properties 'apiKey' not allowed"),
])
def test_schema_refuses_hand_edited_vendor_values(plan_file, tmp_path, edit, message):
    values = yaml.safe_load(plan_file.read_text())
    edit(values["plan"]["vendors"][0])
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = helm("template", "x", str(CHART), "-f", str(path), *SITE, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
