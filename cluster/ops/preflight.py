"""`govllm preflight`: does the live cluster have what the plan and the chart need?

Each check is a pure function over API JSON (nodes, quotas, CRDs, ...) and the generated
Helm values, returning PASS, WARN or FAIL with a sentence an operator can act on. FAIL
means the release cannot start (its minimum does not fit); WARN means the peak of the plan
needs more than is there now (node autoscaling must add it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cluster.ops.kube import Kube

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
GPU = "nvidia.com/gpu"
CHART = Path(__file__).resolve().parents[2] / "helm" / "govllm"
#: Node selector of a GPU class when the values name none (the chart's default, _helpers.tpl).
GFD_PRODUCTS = {"a100-40gb": "NVIDIA-A100-SXM4-40GB", "a100-80gb": "NVIDIA-A100-SXM4-80GB",
                "h100-80gb": "NVIDIA-H100-80GB-HBM3", "h200-141gb": "NVIDIA-H200",
                "l4-24gb": "NVIDIA-L4", "l40s-48gb": "NVIDIA-L40S"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str


def merge(base: dict, override: dict) -> dict:
    """Helm's values merge: maps merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def chart_values(generated: dict, profile: str | None, extra: list[Path]) -> dict:
    """The values helm would use: chart defaults, the generated plan, a profile, then files."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    layers = [generated]
    if profile:
        layers.append(yaml.safe_load((CHART / "profiles" / f"{profile}.yaml").read_text()))
    layers += [yaml.safe_load(p.read_text()) or {} for p in extra]
    for layer in layers:
        values = merge(values, layer)
    return values


def node_selector(values: dict, gpu_class: str) -> dict[str, str]:
    entry = (values.get("gpuNodes", {}).get("classes") or {}).get(gpu_class) or {}
    return entry.get("nodeSelector") or {"nvidia.com/gpu.product": GFD_PRODUCTS.get(gpu_class, "?")}


def parse_quantity(value: Any) -> float:
    from kubernetes.utils import parse_quantity as parse

    return float(parse(str(value)))


def check_crd(crd: dict | None) -> Check:
    if crd is None:
        return Check("kuberay-crd", FAIL, "CRD rayservices.ray.io is not installed: install the "
                     "KubeRay operator (docs/operations.md)")
    served = [v["name"] for v in crd.get("spec", {}).get("versions", []) if v.get("served")]
    if "v1" not in served:
        return Check("kuberay-crd", FAIL, f"rayservices.ray.io serves {served}, not v1: upgrade "
                     "KubeRay to >= 1.3")
    return Check("kuberay-crd", PASS, "rayservices.ray.io serves v1")


def check_gpu_nodes(group: dict, nodes: list[dict], selector: dict[str, str]) -> Check:
    name, per_pod = f"gpu-nodes/{group['gpuClass']}", group["gpusPerPod"]
    fitting = [
        n for n in nodes
        if all(n["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        and not n.get("spec", {}).get("unschedulable")
        and parse_quantity(n.get("status", {}).get("allocatable", {}).get(GPU, 0)) >= per_pod
    ]
    where = ", ".join(f"{k}={v}" for k, v in selector.items())
    have = f"{len(fitting)} node(s) with {where} and >= {per_pod} allocatable {GPU}"
    if len(fitting) < group["minPods"]:
        return Check(name, FAIL, f"{have}; the plan's minimum needs {group['minPods']}: add GPU "
                     "nodes or fix gpuNodes.classes in the values")
    if len(fitting) < group["maxPods"]:
        return Check(name, WARN, f"{have}; the peak needs {group['maxPods']}: the node "
                     "autoscaler must be able to add the rest")
    return Check(name, PASS, f"{have} (peak needs {group['maxPods']})")


def check_storage(values: dict, storage_class: dict | None, pvc: dict | None) -> Check:
    volume = values["weights"]["volume"]
    if volume["type"] == "emptyDir":
        return Check("weights-storage", PASS, "emptyDir on each node's ephemeral storage "
                     "(node-local NVMe where the kubelet keeps it there)")
    if volume["type"] == "ephemeral":
        if storage_class is None:
            return Check("weights-storage", FAIL, f"storage class {volume['storageClassName']!r} "
                         "does not exist")
        return Check("weights-storage", PASS, f"storage class {volume['storageClassName']} present")
    if pvc is None:
        return Check("weights-storage", FAIL, f"PersistentVolumeClaim {volume['existingClaim']!r} "
                     "does not exist in the namespace")
    return Check("weights-storage", PASS, f"claim {volume['existingClaim']} present")


def requested(values: dict) -> dict[str, tuple[float, float]]:
    """Requests (= limits) of the release at its minimum and at its peak, per quota resource."""
    head = values["head"]["resources"]
    auto = values["rayService"]["autoscaler"]["resources"]
    base_cpu = parse_quantity(head["cpu"]) + parse_quantity(auto["cpu"])
    base_mem = parse_quantity(head["memory"]) + parse_quantity(auto["memory"])
    totals = {"cpu": [base_cpu, base_cpu], "memory": [base_mem, base_mem], GPU: [0.0, 0.0],
              "pods": [1.0, 1.0]}
    for g in values["plan"]["workerGroups"]:
        for i, pods in enumerate((g["minPods"], g["maxPods"])):
            totals["cpu"][i] += pods * g["cpu"]
            totals["memory"][i] += pods * g["memoryGiB"] * 2**30
            totals[GPU][i] += pods * g["gpusPerPod"]
            totals["pods"][i] += pods
    return {k: (v[0], v[1]) for k, v in totals.items()}


def check_quotas(quotas: list[dict], need: dict[str, tuple[float, float]]) -> list[Check]:
    names = {"pods": "pods", f"requests.{GPU}": GPU, "requests.cpu": "cpu", "limits.cpu": "cpu",
             "requests.memory": "memory", "limits.memory": "memory", "cpu": "cpu",
             "memory": "memory"}
    checks = []
    for quota in quotas:
        hard = quota.get("status", {}).get("hard") or quota.get("spec", {}).get("hard", {})
        used = quota.get("status", {}).get("used", {})
        for resource, limit in hard.items():
            if resource not in names:
                continue
            at_min, at_max = need[names[resource]]
            left = parse_quantity(limit) - parse_quantity(used.get(resource, 0))
            label = f"quota/{quota['metadata']['name']}/{resource}"
            shown = f"{left:g} left of {limit}; the release needs {at_min:g} at minimum, {at_max:g} at peak"
            status = FAIL if left < at_min else WARN if left < at_max else PASS
            checks.append(Check(label, status, shown))
    if not checks:
        checks.append(Check("quota", PASS, "no ResourceQuota limits CPU, memory, GPUs or pods here"))
    return checks


def check_secret(label: str, name: str, keys: set[str] | None, needed: list[str]) -> Check:
    if keys is None:
        return Check(label, FAIL, f"Secret {name!r} does not exist in the namespace")
    missing = [k for k in needed if k not in keys]
    if missing:
        return Check(label, FAIL, f"Secret {name!r} has no key(s) {missing}")
    return Check(label, PASS, f"Secret {name} has {', '.join(needed)}")


def run_checks(kube: Kube, namespace: str, values: dict) -> list[Check]:
    """Every check against the live cluster, in the order an operator fixes them."""
    checks = [check_crd(kube.crd("rayservices.ray.io"))]
    if kube.namespace(namespace) is None:
        return checks + [Check("namespace", FAIL, f"namespace {namespace!r} does not exist: "
                               f"kubectl create namespace {namespace}")]
    checks.append(Check("namespace", PASS, namespace))
    nodes = kube.nodes()
    for group in values["plan"]["workerGroups"]:
        checks.append(check_gpu_nodes(group, nodes, node_selector(values, group["gpuClass"])))
    volume = values["weights"]["volume"]
    checks.append(check_storage(
        values,
        kube.storage_class(volume["storageClassName"]) if volume["type"] == "ephemeral" else None,
        kube.pvc(namespace, volume["existingClaim"]) if volume["type"] == "pvc" else None))
    checks += check_quotas(kube.quotas(namespace), requested(values))
    store = values["store"]
    checks.append(check_secret("secret/store", store["existingSecret"],
                               kube.secret_keys(namespace, store["existingSecret"]), [store["urlKey"]]))
    if values["ingress"]["enabled"]:
        tls = values["ingress"]["tls"]["secretName"]
        checks.append(check_secret("secret/tls", tls, kube.secret_keys(namespace, tls),
                                   ["tls.crt", "tls.key"]))
    creds = values["objectStore"]["credentials"]
    if creds["mode"] == "secret":
        checks.append(check_secret("secret/object-store", creds["existingSecret"],
                                   kube.secret_keys(namespace, creds["existingSecret"]),
                                   [creds["accessKeyIdKey"], creds["secretAccessKeyKey"]]))
    return checks
