"""`govllm preflight` and `govllm status --context` against a FAKE Kubernetes API server.

No kube-apiserver (nor k3s, kind, kwok) can run on these machines, so the real `kubernetes`
client is pointed, through a real kubeconfig and context, at a small HTTP server on 127.0.0.1
that answers the API paths with canned JSON in the API's own shapes. This tests the client
wiring (paths, label selectors, the service proxy, 404 handling, --context) and the checks'
logic; it cannot test the API server's own behaviour (admission, RBAC, quota accounting),
which docs/operations.md says to check on a real cluster.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from cluster.ops.kube import Kube
from cluster.ops.preflight import (
    FAIL,
    PASS,
    WARN,
    chart_values,
    check_gpu_nodes,
    check_quotas,
    requested,
    run_checks,
)
from cluster.ops.rayservice_status import summarize
from cluster.render.helm_values import helm_values
from cluster.spec.schema import load_spec
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "cluster" / "specs" / "gov-cloud-example.yaml"
NS = "govllm"
GOVLLM = str(Path(sys.executable).parent / "govllm")


def node(name: str, labels: dict, gpus: int, *, unschedulable: bool = False) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": "190", "memory": "2000Gi", "nvidia.com/gpu": str(gpus)}}}


def gfd(product: str) -> dict:
    return {"nvidia.com/gpu.product": product}


def secret(name: str, *keys: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "type": "Opaque", "data": {k: "c2VjcmV0" for k in keys}}


def healthy_cluster() -> dict[str, dict]:
    """API path -> JSON body of a cluster that can run the example spec at its peak."""
    nodes = [node(f"h100-{i}", gfd("NVIDIA-H100-80GB-HBM3"), 8) for i in range(3)]
    nodes += [node("a100-0", gfd("NVIDIA-A100-SXM4-40GB"), 8)]
    nodes += [node(f"l40s-{i}", gfd("NVIDIA-L40S"), 4) for i in range(2)]
    return {
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rayservices.ray.io": {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "rayservices.ray.io"},
            "spec": {"group": "ray.io", "names": {"kind": "RayService", "plural": "rayservices"},
                     "scope": "Namespaced",
                     "versions": [{"name": "v1", "served": True, "storage": True}]}},
        f"/api/v1/namespaces/{NS}": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        "/api/v1/nodes": {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": nodes},
        f"/api/v1/namespaces/{NS}/resourcequotas": {
            "apiVersion": "v1", "kind": "ResourceQuotaList", "metadata": {}, "items": [{
                "metadata": {"name": "gpu-budget", "namespace": NS},
                "spec": {"hard": {"requests.nvidia.com/gpu": "48", "requests.cpu": "200"}},
                "status": {"hard": {"requests.nvidia.com/gpu": "48", "requests.cpu": "200"},
                           "used": {"requests.nvidia.com/gpu": "0", "requests.cpu": "10"}}}]},
        f"/api/v1/namespaces/{NS}/secrets/govllm-redis": secret("govllm-redis", "url"),
        f"/api/v1/namespaces/{NS}/secrets/govllm-tls": secret("govllm-tls", "tls.crt", "tls.key"),
    }


class FakeApiServer:
    """Canned API JSON over HTTP; records every request's path and query."""

    def __init__(self, routes: dict[str, dict]):
        self.routes = routes
        self.requests: list[tuple[str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                url = urlsplit(unquote(self.path))
                fake.requests.append((url.path, parse_qs(url.query)))
                body = fake.routes.get(url.path)
                status = 200
                if isinstance(body, tuple):
                    status, body = body
                if body is None:
                    status, body = 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                         "reason": "NotFound", "code": 404}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kubeconfig(self, path: Path) -> Path:
        """Two contexts: `fake` reaches this server, `elsewhere` a closed port."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "elsewhere",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}},
                         {"name": "closed", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
            "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}},
                         {"name": "elsewhere", "context": {"cluster": "closed", "user": "u"}}],
        }))
        return path

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def values():
    spec, spec_dir = load_spec(SPEC)
    return chart_values(helm_values(spec, spec_dir, source="x"), None, [])


@pytest.fixture
def api(tmp_path):
    server = FakeApiServer(healthy_cluster())
    yield server, server.kubeconfig(tmp_path / "kubeconfig")
    server.close()


def statuses(checks) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def test_preflight_passes_on_a_cluster_that_fits_fake_apiserver(api, values):
    server, kubeconfig = api
    checks = run_checks(Kube("fake", config_file=str(kubeconfig)), NS, values)
    assert statuses(checks) == {
        "kuberay-crd": PASS, "namespace": PASS, "gpu-nodes/h100-80gb": PASS,
        "gpu-nodes/a100-40gb": PASS, "gpu-nodes/l40s-48gb": PASS, "weights-storage": PASS,
        "quota/gpu-budget/requests.nvidia.com/gpu": PASS, "quota/gpu-budget/requests.cpu": PASS,
        "secret/store": PASS, "secret/tls": PASS}, [c for c in checks if c.status != PASS]
    assert ("/api/v1/nodes", {}) in server.requests


def test_preflight_cli_fails_without_kuberay_and_gpus_fake_apiserver(api):
    server, kubeconfig = api
    del server.routes["/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rayservices.ray.io"]
    server.routes["/api/v1/nodes"]["items"] = [node("h100-0", gfd("NVIDIA-H100-80GB-HBM3"), 8)]
    proc = subprocess.run([GOVLLM, "preflight", "--spec", str(SPEC), "--context", "fake",
                           "--kubeconfig", str(kubeconfig), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    result = {c["name"]: c["status"] for c in json.loads(proc.stdout)}
    assert result["kuberay-crd"] == FAIL
    assert result["gpu-nodes/h100-80gb"] == WARN  # one node: the minimum fits, the peak needs 3
    assert result["gpu-nodes/l40s-48gb"] == FAIL
    table = subprocess.run([GOVLLM, "preflight", "--spec", str(SPEC), "--context", "fake",
                            "--kubeconfig", str(kubeconfig)], capture_output=True, text=True, timeout=120)
    assert table.returncode == 1 and "FAIL" in table.stdout and "kuberay-crd" in table.stdout


def test_preflight_uses_the_named_context_fake_apiserver(api):
    _, kubeconfig = api  # the current context points at a closed port
    proc = subprocess.run([GOVLLM, "preflight", "--spec", str(SPEC), "--kubeconfig", str(kubeconfig)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "unreachable" in proc.stderr


def test_preflight_reports_missing_secrets_and_storage_fake_apiserver(api, values):
    server, kubeconfig = api
    del server.routes[f"/api/v1/namespaces/{NS}/secrets/govllm-redis"]
    server.routes[f"/api/v1/namespaces/{NS}/secrets/govllm-tls"] = secret("govllm-tls", "tls.crt")
    pvc_values = copy.deepcopy(values)
    pvc_values["weights"]["volume"] = {"type": "pvc", "existingClaim": "weights", "storageClassName": ""}
    result = statuses(run_checks(Kube("fake", config_file=str(kubeconfig)), NS, pvc_values))
    assert result["secret/store"] == FAIL and result["secret/tls"] == FAIL
    assert result["weights-storage"] == FAIL
    assert (f"/api/v1/namespaces/{NS}/persistentvolumeclaims/weights", {}) in server.requests


def test_gpu_node_check_counts_only_matching_schedulable_nodes():
    group = {"gpuClass": "h100-80gb", "gpusPerPod": 8, "minPods": 1, "maxPods": 2}
    sel = gfd("NVIDIA-H100-80GB-HBM3")
    nodes = [node("a", sel, 8, unschedulable=True), node("b", sel, 4), node("c", gfd("NVIDIA-L4"), 8)]
    assert check_gpu_nodes(group, nodes, sel).status == FAIL
    assert check_gpu_nodes(group, nodes + [node("d", sel, 8)], sel).status == WARN
    assert check_gpu_nodes(group, nodes + [node("d", sel, 8), node("e", sel, 8)], sel).status == PASS


def test_quota_check_compares_minimum_and_peak(values):
    need = requested(values)
    gpus_min, gpus_max = need["nvidia.com/gpu"]
    assert (gpus_min, gpus_max) == (8 + 8 + 4, 3 * 8 + 8 + 2 * 4)
    quota = lambda hard, used: [{"metadata": {"name": "q"}, "status": {  # noqa: E731
        "hard": {"requests.nvidia.com/gpu": hard}, "used": {"requests.nvidia.com/gpu": used}}}]
    assert check_quotas(quota("64", "0"), need)[0].status == PASS
    assert check_quotas(quota("64", "30"), need)[0].status == WARN
    assert check_quotas(quota("64", "50"), need)[0].status == FAIL


def rayservice_object(*, ready: bool, pending: str | None = None) -> dict:
    deployments = {"router": {"status": "HEALTHY"}, "EndpointRegistry": {"status": "HEALTHY"},
                   "model:elyza-jp-70b": {"status": "HEALTHY"},
                   "model:sarashina2_2-3b": {"status": "UNHEALTHY",
                                             "message": "replica failed: CUDA out of memory"}}
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": "gov-cloud-example", "namespace": NS},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints"},
                           {"type": "UpgradeInProgress", "status": "True" if pending else "False"}],
            "numServeEndpoints": 3 if ready else 0,
            "activeServiceStatus": {
                "rayClusterName": "gov-cloud-example-abcde",
                "applicationStatuses": {"gov-cloud-example": {
                    "status": "RUNNING", "serveDeploymentStatuses": deployments}}},
            "pendingServiceStatus": {"rayClusterName": pending} if pending else {},
        }}


def pod(name: str, group: str, ready: bool) -> dict:
    node_type = "head" if group == "headgroup" else "worker"
    labels = {"ray.io/node-type": node_type, "govllm.io/spec": "gov-cloud-example"}
    if node_type == "worker":
        labels["ray.io/group"] = group
    return {"metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_status_summary_from_api_objects():
    readyz = {"status": "not_ready", "models": {"elyza-jp-70b": {"ready_replicas": 2},
                                                "sarashina2.2-3b": {"ready_replicas": 0}}}
    report = summarize(rayservice_object(ready=True, pending="gov-cloud-example-fghij"),
                       [pod("h", "headgroup", True), pod("w1", "h100-80gb", True),
                        pod("w2", "h100-80gb", False)], readyz,
                       planned={"elyza-jp-70b": (1, 8), "sarashina2.2-3b": (1, 3)})
    assert report["ready"] and report["upgrade_in_progress"]
    assert report["pending_cluster"] == "gov-cloud-example-fghij"
    assert report["pods"] == {"headgroup": {"pods": 1, "ready": 1}, "h100-80gb": {"pods": 2, "ready": 1}}
    assert report["models"]["elyza-jp-70b"] == {"deployment_status": "HEALTHY", "ready_replicas": 2,
                                                "planned_replicas": {"min": 1, "max": 8}}
    bad = report["models"]["sarashina2.2-3b"]
    assert bad["deployment_status"] == "UNHEALTHY" and "out of memory" in bad["message"]
    assert bad["ready_replicas"] == 0


def test_status_cli_reads_rayservice_pods_and_router_fake_apiserver(api):
    server, kubeconfig = api
    base = f"/apis/ray.io/v1/namespaces/{NS}/rayservices/gov-cloud-example"
    server.routes[base] = rayservice_object(ready=False)
    server.routes[f"/api/v1/namespaces/{NS}/pods"] = {
        "apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [pod("h", "headgroup", True), pod("w", "h100-80gb", False)]}
    # 503 from the router while one model has no replica: the body still counts replicas
    server.routes[f"/api/v1/namespaces/{NS}/services/gov-cloud-example-serve-svc:8000/proxy/readyz"] = (
        503, {"status": "not_ready", "models": {"elyza-jp-70b": {"ready_replicas": 1},
                                                 "sarashina2.2-3b": {"ready_replicas": 0}}})
    proc = subprocess.run([GOVLLM, "status", "--spec", str(SPEC), "--context", "fake",
                           "--kubeconfig", str(kubeconfig), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ready"] is False and report["reason"] == "ZeroServeEndpoints"
    assert report["router_readyz"] == "not_ready"
    assert report["models"]["sarashina2.2-3b"]["ready_replicas"] == 0
    assert report["models"]["elyza-jp-8b"]["planned_replicas"] == {"min": 1, "max": 6}
    pod_queries = [q for p, q in server.requests if p.endswith("/pods")]
    assert pod_queries == [{"labelSelector": ["govllm.io/spec=gov-cloud-example"]}]
    text = subprocess.run([GOVLLM, "status", "--spec", str(SPEC), "--context", "fake",
                           "--kubeconfig", str(kubeconfig)], capture_output=True, text=True, timeout=120)
    assert "NOT READY" in text.stdout and "model sarashina2.2-3b: UNHEALTHY, ready replicas 0" in text.stdout
    del server.routes[base]
    missing = subprocess.run([GOVLLM, "status", "--spec", str(SPEC), "--context", "fake",
                              "--kubeconfig", str(kubeconfig)], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no RayService 'gov-cloud-example'" in missing.stderr
