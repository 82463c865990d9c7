"""The Helm chart, checked offline with real tools.

* the real `helm` binary (`make install` puts it in .venv/bin): `helm lint --strict` and
  `helm template` for the chart defaults and every cloud profile, always with the values
  `govllm render helm-values` writes for cluster/specs/gov-cloud-example.yaml;
* `kubernetes-validate --strict` (the real CLI) on every rendered manifest, for every
  Kubernetes version the chart supports;
* every RayService against the KubeRay CRD's openAPIV3Schema (tests/data/kuberay), made strict
  (unknown fields rejected, as server-side field validation does), plus the operator's own
  rules that the schema does not express;
* policy: GPU counts, degrees and bounds equal the planner's, restricted securityContext, no
  `latest` tags, resources on every container;
* what keeps others out and records in: the data-plane credential and the HAProxy wrapper on
  every Ray container (and nowhere else), the audit spool claim on every Ray pod, and the
  NetworkPolicies evaluated flow by flow (a small evaluator of their semantics, below).

What cannot be checked here (no API server): admission webhooks, CEL rules, quota, RBAC.
docs/operations.md lists what to check with `--dry-run=server`.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from cluster.render.helm_values import HAPROXY_WRAPPER_PATH, helm_values, render_text
from cluster.render.serve_config import app_args
from cluster.render.target import AUDIT_SPOOL_DIR, MODELS_DIR, STORE_URL_ENV
from cluster.sizing.cluster_plan import plan_cluster
from cluster.spec.schema import load_spec
from serving.config import DATA_PLANE_TOKEN_ENV
from serving.serve_env import HAPROXY_HEADER_TIMEOUT_ENV, SERVE_FLAGS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "govllm"
SPEC = ROOT / "cluster" / "specs" / "gov-cloud-example.yaml"
CRD = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayservices.yaml"
#: The team's reference copy beside the project, when there is one (not in every checkout).
SHARED_CRD = ROOT.parent / "shared" / "k8s" / "crds" / "ray.io_rayservices.yaml"
HELM = Path(sys.executable).parent / "helm"
PROFILES = ["aws", "gcp", "azure", "oci", "sakura"]
#: The example spec's vendor-hosted models (source.endpoint; tests/component/test_helm_vendors.py).
VENDOR_MODELS = [m.id for m in load_spec(SPEC)[0].endpoints()]
VARIANTS = ["default", *PROFILES]
#: Kubernetes versions the chart supports (Chart.yaml kubeVersion >= 1.31).
KUBE_VERSIONS = ["1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0"]
#: Optional parts switched on in every render so they are validated too.
EXTRAS = ["--set", "metrics.serviceMonitor.enabled=true",
          "--set", "metrics.grafanaDashboard.enabled=true",
          "--set", "metrics.prometheusRule.enabled=true"]
#: What every install must add (site.yaml in docs/operations.md): the data-plane Secret's name,
#: and the vendor CA ConfigMap (the example spec's vendor endpoints trust private CAs).
DATA_PLANE_SECRET = "govllm-data-plane"
VENDOR_CA_CONFIGMAP = "govllm-vendor-ca"
SITE = ["--set", f"dataPlane.existingSecret={DATA_PLANE_SECRET}",
        "--set", f"vendorCA.existingConfigMap={VENDOR_CA_CONFIGMAP}"]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not HELM.is_file():
        pytest.fail(f"{HELM} is missing: run `make install` (tools/install_helm.py installs it)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check,
                          timeout=60)


@pytest.fixture(scope="module")
def spec():
    return load_spec(SPEC)


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory, spec) -> Path:
    cluster_spec, spec_dir = spec
    path = tmp_path_factory.mktemp("chart") / "plan.yaml"
    path.write_text(render_text(helm_values(cluster_spec, spec_dir, source="gov-cloud-example.yaml"),
                                source="gov-cloud-example.yaml"))
    return path


def value_args(plan_file: Path, variant: str) -> list[str]:
    args = ["-f", str(plan_file)]
    if variant != "default":
        args += ["-f", str(CHART / "profiles" / f"{variant}.yaml")]
    return args + SITE


def template(*args: str) -> list[dict]:
    proc = helm("template", "govllm", str(CHART), "--namespace", "govllm", *args)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered(plan_file) -> dict[str, list[dict]]:
    """Every variant rendered once by `helm template` (namespace and API versions as KubeRay's)."""
    out = {}
    for variant in VARIANTS:
        proc = helm("template", "govllm", str(CHART), "--namespace", "govllm",
                    "--kube-version", "1.31.0", "--api-versions", "ray.io/v1",
                    "--api-versions", "monitoring.coreos.com/v1",
                    *value_args(plan_file, variant), *EXTRAS)
        out[variant] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def rayservice(docs: list[dict]) -> dict:
    (rs,) = of_kind(docs, "RayService")
    return rs


def pod_specs(rs: dict) -> list[dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def containers(rs: dict) -> list[dict]:
    return [c for p in pod_specs(rs) for c in p.get("initContainers", []) + p["containers"]]


def ray_containers(rs: dict) -> list[dict]:
    """The containers that run Ray (head and every worker group), not the staging ones."""
    return [c for p in pod_specs(rs) for c in p["containers"]]


def init_containers(rs: dict) -> list[dict]:
    return [c for p in pod_specs(rs) for c in p.get("initContainers", [])]


def router_settings(rs: dict) -> dict:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["serving"]["router"]


# --- helm itself -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(plan_file, variant):
    proc = helm("lint", "--strict", str(CHART), *value_args(plan_file, variant), *EXTRAS,
                check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_every_variant_renders_the_expected_objects(rendered):
    for variant, docs in rendered.items():
        kinds = sorted(d["kind"] for d in docs)
        assert kinds.count("RayService") == 1, variant
        assert kinds.count("PodDisruptionBudget") == 3, variant  # one per GPU class
        # the audit spool claim, except where the profile names an existing one
        assert kinds.count("PersistentVolumeClaim") == (0 if variant == "sakura" else 1), variant
        for kind in ("Ingress", "ServiceAccount", "ServiceMonitor", "ConfigMap", "Service"):
            assert kind in kinds, (variant, kind)


@pytest.mark.parametrize(("sets", "message"), [
    ([], "missing properties 'generatedBy', 'plan'"),
    (["image.tag=latest"], "/image/tag"),
    (["ingress.tls.secretName="], "/ingress/tls/secretName"),
    (["rayService.upgradeStrategy.type=NewClusterWithIncrementalUpgrade"],
     "/rayService/upgradeStrategy/gatewayClassName"),
    (["rayService.upgradeStrategy.type=Recreate"], "/rayService/upgradeStrategy/type"),
    (["rayService.name=9-starts-with-a-digit"], "/rayService/name"),
    (["store.existingSecret="], "/store/existingSecret"),
    (["weights.volume.type=pvc"], "/weights/volume/existingClaim"),
    (["objectStore.credentials.mode=secret"], "/objectStore/credentials/existingSecret"),
    (["dataPlane.existingSecret=Not_A_Secret_Name"], "/dataPlane/existingSecret"),
    (["dataPlane.tokenKey="], "/dataPlane/tokenKey"),
    (["audit.spool.persistence.accessModes={ReadWriteOnce}"], "/audit/spool/persistence/accessModes"),
    (["audit.spool.persistence.accessModes={ReadWriteOncePod}"],
     "/audit/spool/persistence/accessModes"),
    (["audit.spool.persistence.accessModes={ReadWriteMany,ReadWriteAll}"],
     "/audit/spool/persistence/accessModes/1"),
    (["audit.spool.persistence.accessModes=null"], "missing property 'accessModes'"),
    (["audit.spool.persistence.size=plenty"], "/audit/spool/persistence/size"),
    (["audit.spool.persistence.existingClaim=Bad_Claim"], "/audit/spool/persistence/existingClaim"),
])
def test_schema_rejects_bad_values(plan_file, sets, message):
    args = ["template", "x", str(CHART)]
    if sets:  # the first case: the generated plan values are missing altogether
        args += ["-f", str(plan_file), *SITE]
        for s in sets:
            args += ["--set", s]
    proc = helm(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# --- Kubernetes API schemas --------------------------------------------------------------------

def test_manifests_pass_kubernetes_validate_strict(rendered, tmp_path):
    """The real kubernetes-validate CLI, strict, every supported version, every manifest."""
    files = []
    for variant, docs in rendered.items():
        for i, doc in enumerate(docs):
            if doc["apiVersion"].startswith(("ray.io/", "monitoring.coreos.com/")):
                continue  # custom resources: the CRD schema below
            path = tmp_path / f"{variant}-{i}-{doc['kind']}.yaml"
            path.write_text(yaml.safe_dump(doc))
            files.append(str(path))
    assert len(files) >= 6 * 12
    tool = Path(sys.executable).parent / "kubernetes-validate"
    for version in KUBE_VERSIONS:
        proc = subprocess.run([str(tool), "--strict", "--quiet", "-k", version, *files],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"Kubernetes {version}:\n{proc.stdout}{proc.stderr}"


def test_kubernetes_validate_catches_a_typo(rendered, tmp_path):
    """The check above can fail: a misspelt field in a NetworkPolicy is rejected."""
    doc = copy.deepcopy(of_kind(rendered["default"], "NetworkPolicy")[0])
    doc["spec"]["policyType"] = doc["spec"].pop("policyTypes")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(doc))
    tool = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run([str(tool), "--strict", "-k", KUBE_VERSIONS[0], str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "policyType" in proc.stdout + proc.stderr


def strict_schema(node):
    """openAPIV3Schema -> JSON Schema that rejects unknown fields (structural schemas prune
    them silently; `kubectl apply --validate=strict` rejects them)."""
    if isinstance(node, dict):
        node = {k: strict_schema(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict_schema(v) for v in node]
    return node


@pytest.mark.skipif(not SHARED_CRD.is_file(), reason="no reference copy beside this checkout")
def test_crd_snapshot_is_the_reference_copy():
    assert CRD.read_bytes() == SHARED_CRD.read_bytes()


@pytest.fixture(scope="module")
def crd_validator():
    crd = yaml.safe_load(CRD.read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    schema = strict_schema(v1["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def crd_errors(validator, rs: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(rs)]


def test_rayservices_match_the_crd_schema(rendered, crd_validator):
    for variant, docs in rendered.items():
        rs = rayservice(docs)
        assert rs["apiVersion"] == "ray.io/v1"
        assert crd_errors(crd_validator, rs) == [], variant


def test_crd_validation_catches_a_typo(rendered, crd_validator):
    rs = copy.deepcopy(rayservice(rendered["default"]))
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert any("maxReplica" in e for e in crd_errors(crd_validator, rs))


DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}


def kuberay_rule_violations(rs: dict) -> list[str]:
    """The operator's checks the CRD schema does not express (../shared/k8s/README.md)."""
    problems = []
    name = rs["metadata"]["name"]
    if len(name) > 47 or not DNS_1035.match(name):
        problems.append(f"name {name!r}: a DNS-1035 label of at most 47 characters")
    cluster = rs["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
    for group, g in groups:
        if not g["template"]["spec"].get("containers"):
            problems.append(f"{group}: no container")
    for g in cluster.get("workerGroupSpecs", []):
        lo, hi = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1)
        if not 0 <= lo <= hi:
            problems.append(f"{g['groupName']}: minReplicas {lo} / maxReplicas {hi}")
        if "replicas" in g and not lo <= g["replicas"] <= hi:
            problems.append(f"{g['groupName']}: replicas {g['replicas']} outside [{lo}, {hi}]")
    strategy = rs["spec"].get("upgradeStrategy", {})
    kind = strategy.get("type")
    if kind is not None and kind not in UPGRADE_TYPES:
        problems.append(f"upgradeStrategy.type {kind!r}")
    if kind == "NewClusterWithIncrementalUpgrade":
        if not cluster.get("enableInTreeAutoscaling"):
            problems.append("incremental upgrade needs enableInTreeAutoscaling")
        if not strategy.get("clusterUpgradeOptions", {}).get("gatewayClassName"):
            problems.append("incremental upgrade needs clusterUpgradeOptions.gatewayClassName")
    return problems


def test_rayservices_follow_the_operator_rules(rendered):
    for variant, docs in rendered.items():
        assert kuberay_rule_violations(rayservice(docs)) == [], variant


def test_on_demand_model_renders_min_zero_in_serve_config_and_its_pods(tmp_path, crd_validator):
    """A GPU model marked sizing.on_demand: min_replicas 0 in serveConfigV2, an on-demand route
    for the routers, and its GPU group (it is alone on a100-40gb) may shrink to 0 pods."""
    from cluster.spec.schema import parse_spec

    cluster_spec, spec_dir = load_spec(SPEC)
    data = cluster_spec.model_dump(mode="json", exclude_unset=True)
    (model,) = [m for m in data["models"] if m["id"] == "sarashina2.2-3b"]
    model["sizing"]["on_demand"] = True
    on_demand_spec = parse_spec(data)
    path = tmp_path / "plan.yaml"
    path.write_text(render_text(helm_values(on_demand_spec, spec_dir, source="on-demand.yaml"),
                                source="on-demand.yaml"))
    proc = helm("template", "govllm", str(CHART), "--namespace", "govllm", "-f", str(path), *SITE)
    rs = rayservice([d for d in yaml.safe_load_all(proc.stdout) if d])
    assert kuberay_rule_violations(rs) == [] and crd_errors(crd_validator, rs) == []
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    auto = {c["model_loading_config"]["model_id"]: c["deployment_config"]["autoscaling_config"]
            for c in app["llm_configs"]}
    assert auto["sarashina2.2-3b"]["min_replicas"] == auto["sarashina2.2-3b"]["initial_replicas"] == 0
    assert auto["sarashina2.2-3b"]["max_replicas"] >= 1
    assert all(a["min_replicas"] >= 1 for m, a in auto.items() if m != "sarashina2.2-3b")
    routes = {m["id"]: m for m in app["serving"]["models"]}
    assert routes["sarashina2.2-3b"]["on_demand"] and not routes["elyza-jp-8b"]["on_demand"]
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups["a100-40gb"]["minReplicas"] == groups["a100-40gb"]["replicas"] == 0
    assert groups["a100-40gb"]["maxReplicas"] >= 1


def test_incremental_upgrade_renders_valid(plan_file, crd_validator):
    proc = helm("template", "x", str(CHART), "-f", str(plan_file), *SITE, "--set",
                "rayService.upgradeStrategy.type=NewClusterWithIncrementalUpgrade",
                "--set", "rayService.upgradeStrategy.gatewayClassName=istio")
    rs = rayservice([d for d in yaml.safe_load_all(proc.stdout) if d])
    assert kuberay_rule_violations(rs) == []
    assert crd_errors(crd_validator, rs) == []


def test_operator_rules_catch_violations(rendered):
    rs = copy.deepcopy(rayservice(rendered["default"]))
    rs["metadata"]["name"] = "x" * 48
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["minReplicas"], group["maxReplicas"] = 3, 2
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"] = []
    rs["spec"]["upgradeStrategy"] = {"type": "NewClusterWithIncrementalUpgrade"}
    rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] = False
    assert len(kuberay_rule_violations(rs)) == 6


# --- policy ------------------------------------------------------------------------------------

def test_gpu_numbers_are_the_planners(rendered, spec):
    """Independently of cluster/render/helm_values.py: per-pod GPUs = the node's GPUs, degrees and
    bounds = the planner's, and enough pods at peak for every replica's GPUs."""
    cluster_spec, spec_dir = spec
    plan = plan_cluster(cluster_spec, spec_dir)
    for variant, docs in rendered.items():
        rs = rayservice(docs)
        app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
        llm = {c["model_loading_config"]["model_id"]: c for c in app["args"]["llm_configs"]}
        groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
        assert set(groups) == {m.sizing.request.gpu.id for m in plan.models}, variant
        for m in plan.models:
            c = llm[m.model_id]
            assert c["engine_kwargs"]["tensor_parallel_size"] == m.sizing.tensor_parallel_size
            assert c["engine_kwargs"]["pipeline_parallel_size"] == m.sizing.pipeline_parallel_size
            assert len(c["placement_group_config"]["bundles"]) == m.sizing.gpus_per_replica
            auto = c["deployment_config"]["autoscaling_config"]
            assert (auto["min_replicas"], auto["max_replicas"]) == (
                m.bounds.min_replicas, m.bounds.max_replicas)
            assert c["accelerator_type"] == m.sizing.request.gpu.ray_accelerator_type
        for gpu, g in groups.items():
            models = [m for m in plan.models if m.sizing.request.gpu.id == gpu]
            per_pod = models[0].sizing.request.node_gpus
            (worker,) = g["template"]["spec"]["containers"]
            res = worker["resources"]
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == str(per_pod)
            assert g["rayStartParams"]["num-gpus"] == str(per_pod)
            peak_gpus = sum(m.gpus_at_max for m in models)
            assert g["maxReplicas"] * per_pod >= peak_gpus
            assert (g["maxReplicas"] - 1) * per_pod < peak_gpus  # no idle pod at the peak
            assert g["minReplicas"] * per_pod >= sum(m.gpus_at_min for m in models)
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                   * g["maxReplicas"] for g in groups.values()) >= sum(
            v["max"] for v in plan.gpus_per_class().values())


def test_serve_config_is_the_local_application_with_pod_settings(rendered, spec):
    """serveConfigV2 == what `govllm serve` runs, except the documented pod differences."""
    cluster_spec, spec_dir = spec
    local = app_args(cluster_spec, spec_dir).to_config()
    app = yaml.safe_load(rayservice(rendered["default"])["spec"]["serveConfigV2"])
    assert app["http_options"] == {"host": "0.0.0.0", "port": 8000}
    (pod_app,) = app["applications"]
    assert pod_app["import_path"] == "serving.app:build_app"
    pod = copy.deepcopy(pod_app["args"])
    router = pod["serving"]["router"]
    assert (router["host"], router["data_plane_host"], router["port"]) == ("0.0.0.0", "0.0.0.0", 8000)
    assert pod["serving"]["store"]["url_env"] == STORE_URL_ENV
    pod["serving"]["store"]["url_env"] = None  # locally the URL is used as written
    assert pod["serving"]["audit"]["spool_dir"] == "/var/lib/govllm/audit-spool"
    for key in ("host", "data_plane_host", "port"):
        router[key] = local["serving"]["router"][key]
    pod["serving"]["audit"]["spool_dir"] = local["serving"]["audit"]["spool_dir"]
    for c in pod["llm_configs"]:
        mid = c["model_loading_config"]["model_id"]
        assert c["model_loading_config"]["model_source"] == f"{MODELS_DIR}/{mid}"
        c["model_loading_config"]["model_source"] = {
            "bucket_uri": next(m.source.uri for m in cluster_spec.models if m.id == mid)}
    assert pod == json.loads(json.dumps(local))


def test_network_policies_default_deny_and_allow_only_the_flows(rendered):
    for variant, docs in rendered.items():
        policies = {p["metadata"]["name"].removeprefix("govllm-govllm-"): p["spec"]
                    for p in of_kind(docs, "NetworkPolicy")}
        deny = policies["default-deny"]
        assert deny["policyTypes"] == ["Ingress", "Egress"], variant
        assert "ingress" not in deny and "egress" not in deny
        api = policies["api-ingress"]
        assert api["policyTypes"] == ["Ingress"]
        assert [p["port"] for r in api["ingress"] for p in r["ports"]] == [8000]
        egress = policies["egress"]["egress"]
        assert egress[0]["ports"][0]["port"] == 53  # DNS
        for rule in egress[1:]:
            assert rule["to"] and rule["ports"], variant  # never an open egress rule
        within = policies["within-release"]
        selector = within["podSelector"]["matchLabels"]
        ray_pods = {**selector, "ray.io/is-ray-node": "yes"}  # KubeRay's label of Ray pods
        assert within["ingress"] == [{"from": [{"podSelector": {"matchLabels": ray_pods}}]}]
        assert within["egress"] == [{"to": [{"podSelector": {"matchLabels": ray_pods}}]}]
        if variant != "default":  # profiles open the endpoints the pods need, plus one
            assert len(egress) == 6 + len(VENDOR_MODELS), variant  # rule per vendor endpoint


# A small evaluator of NetworkPolicy semantics (networking.k8s.io/v1): a pod is isolated in a
# direction once a policy of that type selects it, and then a connection needs a rule of some
# selecting policy whose peers and ports match; src -> dst needs dst's ingress and src's egress.

NAMESPACE = "govllm"
#: Ports the flow checks probe: the API, Ray metrics, the head's dashboard and agent, GCS, Ray
#: client, HAProxy's stats and Prometheus ports, and ports Ray hands out dynamically (the
#: model replicas' data planes among them).
HAPROXY_STATS_PORT, HAPROXY_METRICS_PORT = 8404, 9101
DYNAMIC_PORTS = [10002, 23456, 40123, 52366, 65000]
PROBE_PORTS = [8000, 8080, 8265, 52365, 6379, 10001, HAPROXY_STATS_PORT, HAPROXY_METRICS_PORT,
               *DYNAMIC_PORTS]
#: The only ports anything outside the release's Ray pods may reach (docs/operations.md).
EXCEPTIONS = {"worker": {8000, 8080}, "head": {8265, 52365, 8080}}


def selector_matches(selector: dict, labels: dict) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if ((op == "In" and labels.get(key) not in values)
                or (op == "NotIn" and key in labels and labels[key] in values)
                or (op == "Exists" and key not in labels)
                or (op == "DoesNotExist" and key in labels)):
            return False
    return True


def peer_matches(peer: dict, pod: dict, namespace: str = NAMESPACE) -> bool:
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(pod["ip"])
        block = peer["ipBlock"]
        return (ip in ipaddress.ip_network(block["cidr"])
                and not any(ip in ipaddress.ip_network(e) for e in block.get("except", [])))
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], pod["nsLabels"]):
            return False
    elif pod["namespace"] != namespace:  # a bare podSelector means the policy's namespace
        return False
    return selector_matches(peer.get("podSelector", {}), pod["labels"])


def port_matches(ports: list[dict] | None, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in p:
            return True
        assert isinstance(p["port"], int), f"named port {p['port']}: the evaluator needs numbers"
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def direction_allows(policies: list[dict], pod: dict, other: dict, port: int, direction: str,
                     namespace: str = NAMESPACE) -> bool:
    """Whether `policies` (those of `namespace`) let `pod` talk to `other` in `direction`."""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    if pod["namespace"] != namespace:
        return True  # only the given namespace's policies are evaluated
    selecting = []
    for policy in policies:
        spec = policy["spec"]
        types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))
        if direction in types and selector_matches(spec["podSelector"], pod["labels"]):
            selecting.append(spec)
    if not selecting:
        return True
    return any((not rule.get(peers_key) or any(peer_matches(p, other, namespace) for p in rule[peers_key]))
               and port_matches(rule.get("ports"), port)
               for spec in selecting for rule in spec.get(rules_key, []))


def connects(policies: list[dict], src: dict, dst: dict, port: int) -> bool:
    return (direction_allows(policies, src, dst, port, "Egress")
            and direction_allows(policies, dst, src, port, "Ingress"))


def pod(namespace: str, labels: dict, ip: str = "10.244.7.7") -> dict:
    return {"namespace": namespace, "nsLabels": {"kubernetes.io/metadata.name": namespace},
            "labels": labels, "ip": ip}


def release_pods(rs: dict) -> dict[str, dict]:
    """The Ray pods as KubeRay creates them: the template's labels plus KubeRay's own."""
    cluster = rs["spec"]["rayClusterConfig"]
    name = rs["metadata"]["name"] + "-raycluster-abcde"
    kuberay = {"ray.io/is-ray-node": "yes", "ray.io/cluster": name}
    head = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    pods = {"head": pod(NAMESPACE, {**head, **kuberay, "ray.io/node-type": "head",
                                    "ray.io/group": "headgroup"}, "10.244.1.1")}
    for i, g in enumerate(cluster["workerGroupSpecs"]):
        pods[g["groupName"]] = pod(NAMESPACE, {**g["template"]["metadata"]["labels"], **kuberay,
                                               "ray.io/node-type": "worker",
                                               "ray.io/group": g["groupName"]}, f"10.244.2.{i + 1}")
    return pods


def outside_pods(docs: list[dict]) -> list[dict]:
    """Pods that are not this release's Ray pods, including ones that copy its labels, at every
    address a policy's ipBlock names (CNIs differ in whether ipBlock matches pod addresses)."""
    selector = {"app.kubernetes.io/name": "govllm", "app.kubernetes.io/instance": "govllm"}
    labelled = [
        {},
        {"app": "debug"},
        selector,  # a pod that copies the release's labels but is not a Ray pod
        {**selector, "app.kubernetes.io/instance": "other"},  # another release's Ray pod
        {"app.kubernetes.io/name": "govllm", "app.kubernetes.io/instance": "other",
         "ray.io/is-ray-node": "yes"},
        {"ray.io/is-ray-node": "yes", "ray.io/node-type": "worker"},  # another RayCluster
    ]
    addresses = {"10.244.7.7", "192.0.2.10"}
    for policy in of_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "ipBlock" in peer:
                    addresses.add(str(next(ipaddress.ip_network(peer["ipBlock"]["cidr"]).hosts())))
    namespaces = [NAMESPACE, "ingress-nginx", "monitoring", "kuberay-system", "tenant-apps",
                  "app-routing-system"]
    return [pod(ns, labels, ip) for ns in namespaces for labels in labelled for ip in addresses]


def exposure(docs: list[dict]) -> dict[str, set[int]]:
    """Probe ports any pod outside the release's Ray pods can reach, per kind of Ray pod."""
    policies = of_kind(docs, "NetworkPolicy")
    reached: dict[str, set[int]] = {"head": set(), "worker": set()}
    for name, dst in release_pods(rayservice(docs)).items():
        role = "head" if name == "head" else "worker"
        for src in outside_pods(docs):
            reached[role] |= {p for p in PROBE_PORTS if connects(policies, src, dst, p)}
    return reached


def test_nothing_outside_the_release_reaches_its_ray_pods_but_the_documented_ports(rendered):
    for variant, docs in rendered.items():
        reached = exposure(docs)
        for role, ports in reached.items():
            assert ports <= EXCEPTIONS[role], (variant, role, ports - EXCEPTIONS[role])
        assert 8000 in reached["worker"] and 8080 in reached["worker"], variant
        assert {8265, 52365} <= reached["head"], variant


def test_the_allowed_flows(rendered, plan_file):
    docs = rendered["default"]
    policies = of_kind(docs, "NetworkPolicy")
    pods = release_pods(rayservice(docs))
    head, workers = pods.pop("head"), list(pods.values())
    assert len(workers) == 3
    # Routers (on any Ray pod) reach every replica's data plane; Ray's own ports likewise.
    for src in [head, *workers]:
        for dst in workers:
            assert all(connects(policies, src, dst, p) for p in DYNAMIC_PORTS)
        assert connects(policies, src, head, 6379)
    ingress_controller = pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    prometheus = pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    operator = pod("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
    neighbour = pod(NAMESPACE, {"app.kubernetes.io/name": "govllm",
                                "app.kubernetes.io/instance": "govllm"})  # copies the labels
    for dst in workers:
        assert connects(policies, ingress_controller, dst, 8000)
        assert not connects(policies, ingress_controller, dst, 40123)
        assert not connects(policies, ingress_controller, dst, HAPROXY_STATS_PORT)
        assert connects(policies, prometheus, dst, 8080)
        assert not connects(policies, prometheus, dst, HAPROXY_METRICS_PORT)
        assert not connects(policies, operator, dst, 8265)
        assert not any(connects(policies, neighbour, dst, p) for p in PROBE_PORTS)
        assert not connects(policies, dst, neighbour, 8000)  # nor do Ray pods call out to it
    assert not connects(policies, ingress_controller, head, 8000)  # the head serves no API
    assert connects(policies, operator, head, 8265) and connects(policies, operator, head, 52365)
    # Egress: DNS, and nothing else while networkPolicy.egress names no peers.
    dns = pod("kube-system", {"k8s-app": "kube-dns"})
    anywhere = pod("elsewhere", {}, "192.0.2.10")
    assert connects(policies, workers[0], dns, 53)
    assert not connects(policies, workers[0], anywhere, 443)
    # Without the ServiceMonitor nothing opens the metrics port.
    docs = template(*value_args(plan_file, "default"))
    assert exposure(docs)["worker"] == {8000}
    assert exposure(docs)["head"] == {8265, 52365}


def test_the_flow_checks_can_fail(rendered):
    docs = copy.deepcopy(rendered["default"])
    (api,) = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("api-ingress")]
    del api["spec"]["ingress"][0]["ports"]  # the ingress controller may now reach any port
    assert set(DYNAMIC_PORTS) <= exposure(docs)["worker"]
    docs = copy.deepcopy(rendered["default"])
    (within,) = [p for p in of_kind(docs, "NetworkPolicy")
                 if p["metadata"]["name"].endswith("within-release")]
    del within["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["ray.io/is-ray-node"]
    assert set(DYNAMIC_PORTS) <= exposure(docs)["worker"]  # a pod copying the labels gets in


def test_haproxy_side_ports_are_exposed_nowhere(rendered):
    """Stats (8404, bound to 127.0.0.1 by govllm-haproxy) and HAProxy's Prometheus port are
    neither container ports, Service or Ingress ports, nor named by any NetworkPolicy."""
    from ray.serve._private.constants import (
        RAY_SERVE_HAPROXY_METRICS_PORT,
        RAY_SERVE_HAPROXY_STATS_PORT,
    )

    assert (RAY_SERVE_HAPROXY_STATS_PORT, RAY_SERVE_HAPROXY_METRICS_PORT) == (
        HAPROXY_STATS_PORT, HAPROXY_METRICS_PORT)  # Ray's defaults, which the chart keeps
    for variant, docs in rendered.items():
        rs = rayservice(docs)
        named = {p["containerPort"] for c in containers(rs) for p in c.get("ports", [])}
        for service in of_kind(docs, "Service"):
            named |= {p["port"] for p in service["spec"]["ports"]}
            named |= {p["targetPort"] for p in service["spec"]["ports"] if "targetPort" in p}
        for ingress in of_kind(docs, "Ingress"):
            named |= {path["backend"]["service"]["port"]["number"]
                      for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]}
        for policy in of_kind(docs, "NetworkPolicy"):
            named |= {p["port"] for r in policy["spec"].get("ingress", [])
                      for p in r.get("ports", [])}
        assert not {HAPROXY_STATS_PORT, HAPROXY_METRICS_PORT} & named, variant
        for c in ray_containers(rs):
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert "RAY_SERVE_HAPROXY_STATS_PORT" not in env
            assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == HAPROXY_WRAPPER_PATH


def test_pods_are_restricted(rendered):
    for variant, docs in rendered.items():
        rs = rayservice(docs)
        for pod in pod_specs(rs):
            ctx = pod["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0
            assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
            for vol in pod["volumes"]:
                assert "hostPath" not in vol, variant
        auto = rs["spec"]["rayClusterConfig"]["autoscalerOptions"]
        for c in containers(rs) + [{"name": "autoscaler", **auto}]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (variant, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["runAsNonRoot"] is True and sc.get("privileged") is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_images_are_pinned_and_resources_set(rendered):
    for variant, docs in rendered.items():
        rs = rayservice(docs)
        auto = rs["spec"]["rayClusterConfig"]["autoscalerOptions"]
        for c in containers(rs) + [{"name": "autoscaler", "image": "x:pinned", **auto}]:
            repo, _, tag = c["image"].rpartition(":")
            assert repo and tag and tag != "latest" and "/" not in tag, (variant, c["image"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (variant, c["name"], kind)


def test_every_container_gets_the_store_secret_and_no_credential_in_plain_text(rendered):
    for variant, docs in rendered.items():
        for c in containers(rayservice(docs)):
            env = {e["name"]: e for e in c["env"]}
            ref = env[STORE_URL_ENV]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "govllm-redis", "key": "url"}, (variant, c["name"])
            assert all("value" not in e or "redis" not in str(e["value"]) for e in c["env"])


def ray_env_expectations(token_env: str, timeout_s: int, secret: str, key: str) -> dict:
    """Every Ray container's variables from the generated values and the data-plane Secret."""
    plain = {**SERVE_FLAGS, "RAY_SERVE_HAPROXY_BINARY_PATH": HAPROXY_WRAPPER_PATH,
             HAPROXY_HEADER_TIMEOUT_ENV: str(timeout_s)}
    expected = {k: {"name": k, "value": v} for k, v in plain.items()}
    expected[token_env] = {"name": token_env,
                           "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
    return expected


def check_ray_env(rs: dict, expected: dict, where: str) -> None:
    groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert len(ray_containers(rs)) == 1 + len(groups) >= 2, where  # head + every group
    for c in ray_containers(rs):
        env = {e["name"]: e for e in c["env"]}
        assert len(env) == len(c["env"]), (where, c["name"])  # no variable twice
        for name, entry in expected.items():
            assert env.get(name) == entry, (where, c["name"], name)
    inits = init_containers(rs)
    assert inits, where
    for c in inits:  # weight staging runs no Ray, no HAProxy and never sees the credential
        assert not set(expected) & {e["name"] for e in c["env"]}, (where, c["name"])


def test_ray_containers_get_serve_flags_haproxy_wrapper_and_the_data_plane_secret(rendered, spec):
    cluster_spec, _ = spec
    expected = ray_env_expectations(DATA_PLANE_TOKEN_ENV, cluster_spec.router.request_header_timeout_s,
                                    DATA_PLANE_SECRET, "token")
    assert HAPROXY_WRAPPER_PATH == "/opt/govllm/venv/bin/govllm-haproxy"
    for variant, docs in rendered.items():
        rs = rayservice(docs)
        check_ray_env(rs, expected, variant)
        # the routers read the credential from the variable the containers carry
        assert router_settings(rs)["data_plane_token_env"] == DATA_PLANE_TOKEN_ENV


@pytest.fixture(scope="module")
def custom_router_plan(tmp_path_factory, spec) -> Path:
    """The example spec with a non-default header timeout and credential variable."""
    cluster_spec, spec_dir = spec
    router = cluster_spec.router.model_copy(update={"request_header_timeout_s": 23,
                                                    "data_plane_token_env": "GOVLLM_DP_TEST"})
    custom = cluster_spec.model_copy(update={"router": router})
    path = tmp_path_factory.mktemp("custom") / "plan.yaml"
    path.write_text(render_text(helm_values(custom, spec_dir, source="custom.yaml"),
                                source="custom.yaml"))
    return path


def test_the_specs_router_settings_reach_every_ray_container(custom_router_plan):
    """Timeout and variable name come from the spec through the generated values, not the chart."""
    for variant in ("default", "azure"):
        docs = template(*value_args(custom_router_plan, variant), "--set", "dataPlane.tokenKey=dp",
                        "--set", "dataPlane.existingSecret=site-dp")
        rs = rayservice(docs)
        check_ray_env(rs, ray_env_expectations("GOVLLM_DP_TEST", 23, "site-dp", "dp"), variant)
        assert router_settings(rs)["data_plane_token_env"] == "GOVLLM_DP_TEST"
        assert router_settings(rs)["request_header_timeout_s"] == 23
        names = {e["name"] for c in containers(rs) for e in c["env"]}
        assert DATA_PLANE_TOKEN_ENV not in names


def test_no_data_plane_secret_no_release(plan_file):
    """Without dataPlane.existingSecret neither template nor install renders, and the message
    says how to create the Secret. (`helm lint` runs templates in lint mode, where `fail` is
    only reported: the install is what refuses.)"""
    for command in (["template", "govllm", str(CHART), "--namespace", "prod-llm"],
                    ["install", "govllm", str(CHART), "--namespace", "prod-llm",
                     "--dry-run=client"]):
        proc = helm(*command, "-f", str(plan_file), check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, command
        assert "dataPlane.existingSecret is required" in out, out
        assert ("kubectl -n prod-llm create secret generic govllm-data-plane "
                "--from-literal=token=$(openssl rand -hex 32)") in out, out


def test_a_plan_without_the_data_plane_variable_is_refused(plan_file, tmp_path):
    """A plan rendered before the credential existed must be rendered again."""
    values = yaml.safe_load(plan_file.read_text())
    del values["plan"]["dataPlane"]
    old = tmp_path / "old-plan.yaml"
    old.write_text(yaml.safe_dump(values))
    proc = helm("template", "x", str(CHART), "-f", str(old), *SITE, check=False)
    assert proc.returncode != 0
    assert "at '/plan': missing property 'dataPlane'" in proc.stderr, proc.stderr


def test_generated_values_carry_the_haproxy_and_credential_settings(spec):
    cluster_spec, spec_dir = spec
    values = helm_values(cluster_spec, spec_dir, source="x")
    assert values["rayService"]["env"] == {
        **SERVE_FLAGS, "RAY_SERVE_HAPROXY_BINARY_PATH": HAPROXY_WRAPPER_PATH,
        HAPROXY_HEADER_TIMEOUT_ENV: str(cluster_spec.router.request_header_timeout_s),
        "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER": "1s"}
    assert values["plan"]["dataPlane"] == {"tokenEnv": cluster_spec.router.data_plane_token_env}
    clash = cluster_spec.router.model_copy(update={"data_plane_token_env": STORE_URL_ENV})
    with pytest.raises(ValueError, match="router.data_plane_token_env"):
        helm_values(cluster_spec.model_copy(update={"router": clash}), spec_dir, source="x")


# --- audit spool ---------------------------------------------------------------------------------

SPOOL_CLASSES = {"default": (None, "50Gi"), "aws": ("efs-sc", "50Gi"),
                 "gcp": ("standard-rwx", "1Ti"), "azure": ("azurefile-csi-nfs", "100Gi"),
                 "oci": ("oci-fss", "50Gi")}


def spool_claims(rs: dict) -> set[str]:
    """The claim mounted at the spool directory of every Ray pod (one name, checked)."""
    claims = set()
    for pod in pod_specs(rs):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (ray,) = pod["containers"]
        (mount,) = [m for m in ray["volumeMounts"] if m["mountPath"] == AUDIT_SPOOL_DIR]
        assert not mount.get("readOnly")
        claims.add(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
        for init in pod.get("initContainers", []):  # staging never touches the records
            assert mount["name"] not in {m["name"] for m in init["volumeMounts"]}
    return claims


def test_audit_spool_is_one_kept_read_write_many_claim_on_every_ray_pod(rendered):
    for variant, docs in rendered.items():
        rs = rayservice(docs)
        assert yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"][
            "serving"]["audit"]["spool_dir"] == AUDIT_SPOOL_DIR
        claims = spool_claims(rs)
        pvcs = of_kind(docs, "PersistentVolumeClaim")
        if variant == "sakura":  # the profile names a claim bound to the NFS appliance
            assert claims == {"govllm-audit-spool"} and pvcs == []
            continue
        (pvc,) = pvcs
        assert claims == {pvc["metadata"]["name"]} == {"govllm-govllm-audit-spool"}
        assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        storage_class, size = SPOOL_CLASSES[variant]
        assert pvc["spec"].get("storageClassName") == storage_class, variant
        assert pvc["spec"]["resources"]["requests"]["storage"] == size


def test_audit_spool_settings(plan_file):
    docs = template(*value_args(plan_file, "aws"),
                    "--set", "audit.spool.persistence.existingClaim=records")
    assert of_kind(docs, "PersistentVolumeClaim") == []
    assert spool_claims(rayservice(docs)) == {"records"}
    docs = template(*value_args(plan_file, "default"),
                    "--set", "audit.spool.persistence.keepOnUninstall=false")
    (pvc,) = of_kind(docs, "PersistentVolumeClaim")
    assert "annotations" not in pvc["metadata"]
    # a spec without audit: no claim, nothing mounted
    docs = template(*value_args(plan_file, "default"), "--set", "plan.audit.enabled=false")
    assert of_kind(docs, "PersistentVolumeClaim") == []
    for pod in pod_specs(rayservice(docs)):
        assert AUDIT_SPOOL_DIR not in {m["mountPath"] for c in pod["containers"]
                                       for m in c["volumeMounts"]}
        assert all("persistentVolumeClaim" not in v for v in pod["volumes"])


def test_weights_are_staged_and_verified_before_the_engines(rendered):
    rs = rayservice(rendered["default"])
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    sources = {c["model_loading_config"]["model_id"]: c["model_loading_config"]["model_source"]
               for c in app["args"]["llm_configs"]}
    staged = {}
    for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        pod = g["template"]["spec"]
        for init in pod["initContainers"]:
            cmd = init["command"]
            assert cmd[:3] == ["govllm", "weights", "pull"]
            args = dict(zip(cmd[3::2], cmd[4::2], strict=True))
            assert args["--from"].startswith("s3://")
            staged[args["--model"]] = args["--to"]
            assert {"name": "weights", "mountPath": MODELS_DIR} in init["volumeMounts"]
        (worker,) = pod["containers"]
        assert {"name": "weights", "mountPath": MODELS_DIR, "readOnly": True} in worker["volumeMounts"]
    assert staged == sources  # every model staged once, where its engine loads it


def test_readiness_is_the_routers_readyz_and_the_head_is_not_in_the_serve_service(rendered):
    rs = rayservice(rendered["default"])
    assert rs["spec"]["excludeHeadPodFromServeSvc"] is True
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["readinessProbe"]["httpGet"]["path"] == "/api/gcs_healthz"
    for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        probe = g["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        assert probe == {"path": "/readyz", "port": 8000}
    (ingress,) = of_kind(rendered["default"], "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{rs['metadata']['name']}-serve-svc", "port": {"number": 8000}}


def test_profiles_select_their_clouds_gpu_nodes(rendered):
    expected = {"aws": ("node.kubernetes.io/instance-type", "p5.48xlarge"),
                "gcp": ("cloud.google.com/gke-accelerator", "nvidia-h100-80gb"),
                "azure": ("node.kubernetes.io/instance-type", "Standard_ND96isr_H100_v5"),
                "oci": ("node.kubernetes.io/instance-type", "BM.GPU.H100.8"),
                "sakura": ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
                "default": ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3")}
    for variant, (label, value) in expected.items():
        groups = rayservice(rendered[variant])["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        (h100,) = [g for g in groups if g["groupName"] == "h100-80gb"]
        assert h100["template"]["spec"]["nodeSelector"] == {label: value}, variant
        assert any(t["key"] == "nvidia.com/gpu" for t in h100["template"]["spec"]["tolerations"])


def leaf_paths(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaf_paths(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


def test_chart_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    lines = readme.splitlines()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for path in leaf_paths(values):
        parts = path.split(".")[:3]
        parent, leaf = ".".join(parts[:-1]), parts[-1]
        if ".".join(parts) in readme:
            continue
        if not any(parent in line and leaf in line for line in lines if line.startswith("|")):
            missing.append(path)
    assert missing == []
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]) >= set(values) | {"generatedBy", "plan"}
