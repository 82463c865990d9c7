"""The Helm chart, checked offline with real tools.

* the real `helm` binary (`make install` puts it in .venv/bin): `helm lint --strict` and
  `helm template` for the chart defaults and every cloud profile, always with the values
  `govllm render helm-values` writes for cluster/specs/gov-cloud-example.yaml;
* `kubernetes-validate --strict` (the real CLI) on every rendered manifest, for every
  Kubernetes version the chart supports;
* every RayService against the KubeRay CRD's openAPIV3Schema (tests/data/kuberay), made strict
  (unknown fields rejected, as server-side field validation does), plus the operator's own
  rules that the schema does not express;
* policy: GPU counts, degrees and bounds equal the planner's, NetworkPolicies, restricted
  securityContext, no `latest` tags, resources on every container.

What cannot be checked here (no API server): admission webhooks, CEL rules, quota, RBAC.
docs/operations.md lists what to check with `--dry-run=server`.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from cluster.cluster_plan import plan_cluster
from cluster.helm_values import MODELS_DIR, STORE_URL_ENV, helm_values, render_text
from cluster.serve_config import app_args
from cluster.spec import load_spec
from govllm.runtime_env import SERVE_FLAGS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "govllm"
SPEC = ROOT / "cluster" / "specs" / "gov-cloud-example.yaml"
CRD = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayservices.yaml"
#: The team's reference copy beside the project, when there is one (not in every checkout).
SHARED_CRD = ROOT.parent / "shared" / "k8s" / "crds" / "ray.io_rayservices.yaml"
HELM = Path(sys.executable).parent / "helm"
PROFILES = ["aws", "gcp", "azure", "oci", "sakura"]
VARIANTS = ["default", *PROFILES]
#: Kubernetes versions the chart supports (Chart.yaml kubeVersion >= 1.31).
KUBE_VERSIONS = ["1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0"]
#: Optional parts switched on in every render so they are validated too.
EXTRAS = ["--set", "metrics.serviceMonitor.enabled=true",
          "--set", "metrics.grafanaDashboard.enabled=true"]


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
    return args


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
])
def test_schema_rejects_bad_values(plan_file, sets, message):
    args = ["template", "x", str(CHART)]
    if sets:  # the first case: the generated plan values are missing altogether
        args += ["-f", str(plan_file)]
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


def test_incremental_upgrade_renders_valid(plan_file, crd_validator):
    proc = helm("template", "x", str(CHART), "-f", str(plan_file), "--set",
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
    """Independently of cluster/helm_values.py: per-pod GPUs = the node's GPUs, degrees and
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
    local = app_args(cluster_spec, spec_dir)
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
        assert within["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == selector
        if variant != "default":  # profiles open the endpoints the pods need
            assert len(egress) == 6, variant


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


def test_ray_containers_get_serve_flags_and_the_store_secret(rendered):
    for variant, docs in rendered.items():
        for c in containers(rayservice(docs)):
            env = {e["name"]: e for e in c["env"]}
            for key, value in SERVE_FLAGS.items():
                assert env[key]["value"] == value, (variant, c["name"], key)
            ref = env[STORE_URL_ENV]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "govllm-redis", "key": "url"}
            assert all("value" not in e or "redis" not in str(e["value"]) for e in c["env"])


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
