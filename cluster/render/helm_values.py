"""Cluster spec -> the generated values file of the Helm chart (`govllm render helm-values`).

The chart (helm/govllm) never asks for a GPU count, a tensor-parallel degree or a
replica bound: every such number comes from here, and here it comes from the sizing
planner (`cluster.sizing.cluster_plan.plan_cluster`) and from `cluster.render.serve_config`, the
same code `govllm serve` runs. The generated file has two top-level keys the chart
requires (values.schema.json):

* `rayService`: the RayService name, `serveConfigV2`, the Serve config of the spec
  with the few values that differ inside a pod (listen on 0.0.0.0, weights staged
  under MODELS_DIR, audit spool under AUDIT_SPOOL_DIR, which the chart puts on a
  shared PersistentVolumeClaim, Redis URL read from a Secret-backed environment
  variable), and `env`, the variables every Ray container gets (Ray Serve's flags and
  the HAProxy wrapper with the spec's header-read timeout);
* `plan`: one worker group per GPU class (GPUs per pod, pod bounds, CPU and memory),
  the per-model numbers the policy tests and `govllm status` compare against, and the
  names of the environment variables the chart fills from Secrets (Redis URL,
  data-plane credential).

Why whole-node pods: a Ray placement group packed STRICT_PACK must land in one Ray
node, i.e. one pod, so a pod must hold a whole replica; giving each pod all GPUs of a
node keeps NVLink between a replica's GPUs and lets the node-local NVMe stage the
weights once per node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cluster.render.serve_config import serve_config_file
from cluster.render.target import AUDIT_SPOOL_DIR, POD, SERVE_PORT, STORE_URL_ENV
from cluster.sizing.cluster_plan import ClusterPlan, ModelPlan, plan_cluster
from cluster.sizing.inputs import PlanDoesNotFit, PlanningError
from cluster.spec.schema import ClusterSpec
from serving.config import DirectorySink, LocalKeyFile
from serving.serve_env import HAPROXY_WRAPPER, SERVE_FLAGS, haproxy_environment

VENDOR_CA_DIR = "/etc/govllm/vendor-ca"  # the chart mounts vendorCA.existingConfigMap here
RAY_VERSION = "2.60.0"
#: The virtual environment of the image (its console scripts: govllm, govllm-haproxy).
IMAGE_VENV_BIN = "/opt/govllm/venv/bin"
#: What Ray Serve runs instead of HAProxy (RAY_SERVE_HAPROXY_BINARY_PATH).
HAPROXY_WRAPPER_PATH = f"{IMAGE_VENV_BIN}/{HAPROXY_WRAPPER}"
GENERATED_BY = "govllm render helm-values"

#: Host resources around the planned GPUs (not GPU numbers; documented in docs/operations.md).
HOST_MEMORY_BASE_GIB_PER_GPU = 16  # engine process, CUDA context, tokenizer, Ray worker
CPU_HEADROOM_PER_POD = 2           # raylet, HAProxy, router replicas (0 CPU in Ray's books)
#: Checkpoints are stored in bf16 unless they are pre-quantised (fp8/int8 are applied online).
PREQUANTISED = frozenset({"awq", "gptq", "int8"})


class HelmValuesError(PlanningError):
    """The spec cannot run on Kubernetes as written; the message names the field and the fix."""


@dataclass(frozen=True)
class WorkerGroupPlan:
    gpu_class: str
    ray_accelerator_type: str
    gpus_per_pod: int
    min_pods: int
    max_pods: int
    cpu: int
    memory_gib: int
    staging_gib: int
    models: list[ModelPlan]


def _check_kubernetes_ready(spec: ClusterSpec) -> None:
    """Refuse what only works on one machine: local weights, an embedded store, local audit."""
    problems: list[str] = []
    if spec.engine.device != "gpu":
        problems.append("engine.device: the chart runs GPU deployments; use engine.device gpu "
                        "(CPU specs run with `govllm serve`)")
    for m in spec.self_hosted():
        uri = m.source.uri
        if uri is None or not uri.startswith("s3://"):
            problems.append(f"models[{m.id}].source: a cluster stages weights from object storage; "
                            "set source.uri to s3://bucket/prefix (upload with `govllm weights push`)")
    for m in spec.endpoints():
        ep, where = m.source.endpoint, f"models[{m.id}].source.endpoint"
        if ep.egress is None:
            problems.append(f"{where}.egress: the release's NetworkPolicies allow egress only to "
                            "declared addresses; give the vendor's cidrs (or namespace and "
                            "pod_labels for an in-cluster engine)")
        if ep.credential_env is not None and ep.secret is None:
            problems.append(f"{where}.secret: name the existing Secret (and key) that holds "
                            f"{ep.credential_env}; the chart never carries the key itself")
        if ep.ca_bundle is not None and not ep.ca_bundle.startswith(VENDOR_CA_DIR + "/"):
            problems.append(f"{where}.ca_bundle: on Kubernetes the chart mounts vendorCA.existingConfigMap "
                            f"at {VENDOR_CA_DIR}; name a file there, e.g. {VENDOR_CA_DIR}/vendor-ca.pem")
        other = next((o for o in spec.endpoints() if o.id != m.id and o.source.endpoint.credential_env
                      == ep.credential_env and o.source.endpoint.secret != ep.secret), None)
        if ep.credential_env is not None and other is not None:
            problems.append(f"{where}.credential_env: {ep.credential_env} is also models[{other.id}]'s "
                            "credential with another Secret; one variable holds one key: rename one")
        if ep.credential_env in {STORE_URL_ENV, spec.router.data_plane_token_env, *ray_environment(spec)}:
            problems.append(f"{where}.credential_env: {ep.credential_env} is already set by the chart "
                            "to something else; choose another name")
    if spec.store.url is None:
        problems.append("store: the embedded Redis is for `govllm serve`; set store.url to the "
                        "cluster's Redis")
    elif urlsplit(spec.store.url).password or urlsplit(spec.store.url).username:
        problems.append("store.url carries a credential; keep it without user/password in the spec "
                        "and put the full URL in the Secret named by the chart's "
                        "store.existingSecret")
    token_env = spec.router.data_plane_token_env
    if token_env in {STORE_URL_ENV, *ray_environment(spec)}:
        problems.append(f"router.data_plane_token_env: {token_env} is already set by the chart "
                        "to something else; choose another name")
    if spec.tracing.enabled and urlsplit(spec.tracing.endpoint).hostname in ("127.0.0.1", "localhost", "::1"):
        problems.append("tracing.endpoint: a pod's loopback has no collector; name the collector's "
                        "Service, e.g. http://otel-collector.monitoring:4318/v1/traces")
    if spec.audit.enabled:
        if spec.audit.sink is None or isinstance(spec.audit.sink, DirectorySink):
            problems.append("audit.sink: a pod's directory is not durable; use type: s3")
        if spec.audit.keys is None or isinstance(spec.audit.keys, LocalKeyFile):
            problems.append("audit.keys: a key file inside a pod is lost with it; use type: kms")
    if problems:
        raise HelmValuesError("the spec cannot be rendered for Kubernetes:\n  " + "\n  ".join(problems))


def ray_environment(spec: ClusterSpec) -> dict[str, str]:
    """Plain variables of every Ray container: Serve's flags and the HAProxy wrapper's.

    Ray reads them at import in every Ray process, and HAProxy runs on every node
    (proxy_location EveryNode), so the chart sets them on the head and every worker
    group, not on the weight-staging init containers.
    """
    return {**SERVE_FLAGS,
            **haproxy_environment(spec.router.request_header_timeout_s, HAPROXY_WRAPPER_PATH)}


def pods_needed(replica_shapes: list[tuple[int, int]], gpus_per_pod: int) -> int:
    """Pods of `gpus_per_pod` GPUs that hold every replica, packed first-fit decreasing.

    A replica is (tensor-parallel degree, pipeline stages): without stages it must sit in
    one pod (STRICT_PACK); with stages each stage's TP GPUs sit in one pod (PACK).
    """
    items: list[int] = []
    for tp, pp in replica_shapes:
        items.extend([tp * pp] if pp == 1 else [tp] * pp)
    free: list[int] = []
    for size in sorted(items, reverse=True):
        if size > gpus_per_pod:
            raise HelmValuesError(f"a replica needs {size} GPUs in one pod; pods have {gpus_per_pod}")
        for i, left in enumerate(free):
            if left >= size:
                free[i] -= size
                break
        else:
            free.append(gpus_per_pod - size)
    return len(free)


def _staging_bytes(m: ModelPlan) -> int:
    req = m.sizing.request
    if req.quantization in PREQUANTISED:
        return m.sizing.weight_bytes
    return req.params * 2


def worker_groups(spec: ClusterSpec, cluster: ClusterPlan) -> list[WorkerGroupPlan]:
    """One group per GPU class in use, in the order of the spec's gpu_pools."""
    groups: list[WorkerGroupPlan] = []
    for pool in spec.gpu_pools:
        models = [m for m in cluster.models if m.sizing.request.gpu.id == pool.gpu]
        if not models:
            continue
        gpus_per_pod = models[0].sizing.request.node_gpus
        shape = [(m.sizing.tensor_parallel_size, m.sizing.pipeline_parallel_size) for m in models]
        at_min = [s for m, s in zip(models, shape, strict=True) for _ in range(m.bounds.min_replicas)]
        at_max = [s for m, s in zip(models, shape, strict=True) for _ in range(m.bounds.max_replicas)]
        max_pods = pods_needed(at_max, gpus_per_pod)
        if pool.max_gpus is not None and max_pods * gpus_per_pod > pool.max_gpus:
            raise PlanDoesNotFit(
                f"gpu_pools[{pool.gpu}]: the peak needs {max_pods} pods of {gpus_per_pod} GPUs "
                f"({max_pods * gpus_per_pod} GPUs, whole nodes), the pool allows {pool.max_gpus}; "
                "raise max_gpus or lower the load")
        weights_gib = max(m.sizing.weight_bytes_per_gpu for m in models) / 2**30
        memory_gib = gpus_per_pod * (HOST_MEMORY_BASE_GIB_PER_GPU + math.ceil(weights_gib))
        staging = sum(_staging_bytes(m) for m in models) * 1.1 / 2**30
        groups.append(WorkerGroupPlan(
            gpu_class=pool.gpu,
            ray_accelerator_type=models[0].sizing.request.gpu.ray_accelerator_type,
            gpus_per_pod=gpus_per_pod,
            min_pods=pods_needed(at_min, gpus_per_pod),
            max_pods=max_pods,
            cpu=math.ceil(gpus_per_pod * spec.engine.cpus_per_replica) + CPU_HEADROOM_PER_POD,
            memory_gib=memory_gib,
            staging_gib=max(1, math.ceil(staging)),
            models=models,
        ))
    return groups


def helm_values(spec: ClusterSpec, spec_dir: Path, *, source: str,
                plan: ClusterPlan | None = None) -> dict[str, Any]:
    """The generated values file for `helm install -f <this> -f profiles/<cloud>.yaml`.

    The planner runs once (unless `plan` is given); worker groups and the pods' Serve
    config (the pod target: staged weights, Secret-backed store URL) both read that plan.
    """
    _check_kubernetes_ready(spec)
    cluster = plan or plan_cluster(spec, spec_dir)
    if not cluster.fits:
        raise PlanDoesNotFit("the cluster plan does not fit:\n  " + "\n  ".join(cluster.problems))
    groups = worker_groups(spec, cluster)
    serve_config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        **serve_config_file(spec, spec_dir, plan=cluster, target=POD),
    }
    uris = {m.id: m.source.uri for m in spec.models}
    return {
        "generatedBy": GENERATED_BY,
        "rayService": {
            "name": spec.name,
            "rayVersion": RAY_VERSION,
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False, allow_unicode=True),
            # Ray Serve reads these at import in every Ray process: set on every Ray container.
            "env": ray_environment(spec),
        },
        "plan": {
            "spec": source,
            "workerGroups": [
                {
                    "name": g.gpu_class,
                    "gpuClass": g.gpu_class,
                    "rayAcceleratorType": g.ray_accelerator_type,
                    "gpusPerPod": g.gpus_per_pod,
                    "minPods": g.min_pods,
                    "maxPods": g.max_pods,
                    "cpu": g.cpu,
                    "memoryGiB": g.memory_gib,
                    "stagingGiB": g.staging_gib,
                    "models": [m.model_id for m in g.models],
                }
                for g in groups
            ],
            "models": [
                {
                    "id": m.model_id,
                    "gpuClass": m.sizing.request.gpu.id,
                    "tensorParallelSize": m.sizing.tensor_parallel_size,
                    "pipelineParallelSize": m.sizing.pipeline_parallel_size,
                    "gpusPerReplica": m.sizing.gpus_per_replica,
                    "minReplicas": m.bounds.min_replicas,
                    "maxReplicas": m.bounds.max_replicas,
                    "uri": uris[m.model_id],
                    "stagedPath": POD.staged_path(m.model_id),
                }
                for m in cluster.models
            ],
            "store": {"urlEnv": STORE_URL_ENV},
            # The chart fills it from dataPlane.existingSecret on every Ray container: model
            # replicas refuse requests without it and only routers send it.
            "dataPlane": {"tokenEnv": spec.router.data_plane_token_env},
            # Vendor endpoints: their credentials from existing Secrets on every Ray container
            # (routers run on any), and the only addresses the egress policy lets them reach.
            "vendors": [_vendor_values(m) for m in spec.endpoints()],
            "audit": _audit_summary(spec),
            # The collector the routers and engines export traces to: the chart's egress rule
            # (networkPolicy.egress.otlpCollector) opens this port only.
            "tracing": _tracing_summary(spec),
        },
    }


def _vendor_values(model) -> dict[str, Any]:
    ep = model.source.endpoint
    peers: list[dict[str, Any]] = [{"ipBlock": {"cidr": c}} for c in ep.egress.cidrs]
    if ep.egress.namespace is not None:
        peer: dict[str, Any] = {"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": ep.egress.namespace}}}
        if ep.egress.pod_labels:
            peer["podSelector"] = {"matchLabels": dict(ep.egress.pod_labels)}
        peers.append(peer)
    out: dict[str, Any] = {
        "model": model.id,
        "endpoint": ep.host,
        "egress": {"to": peers, "ports": [{"port": ep.port, "protocol": "TCP"}]},
    }
    if ep.credential_env is not None:
        out["credentialEnv"] = ep.credential_env
        out["secret"] = {"name": ep.secret.name, "key": ep.secret.key}
    if ep.ca_bundle is not None:
        out["caBundle"] = ep.ca_bundle
    return out


def _audit_summary(spec: ClusterSpec) -> dict[str, Any]:
    """Where the audit trail goes; the chart mounts the spool claim at spoolDir on every
    Ray pod (router replicas can run on any) and documents the egress."""
    if not spec.audit.enabled:
        return {"enabled": False}
    sink, keys = spec.audit.sink, spec.audit.keys
    return {"enabled": True, "spoolDir": AUDIT_SPOOL_DIR, "bucket": sink.bucket,
            "region": sink.region, "kmsKeyId": keys.key_id}


def _tracing_summary(spec: ClusterSpec) -> dict[str, Any]:
    """Where traces go (spec `tracing`); the endpoint itself is in serveConfigV2."""
    tracing = spec.tracing
    if not tracing.enabled:
        return {"enabled": False}
    url = urlsplit(tracing.endpoint)
    return {"enabled": True, "endpoint": tracing.endpoint,
            "port": url.port or (443 if url.scheme == "https" else 80)}


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (serveConfigV2) as literal blocks an operator can read."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def render_text(values: dict[str, Any], *, source: str) -> str:
    header = (f"# Generated by `{GENERATED_BY} --spec {source}`. Do not edit: every number here\n"
              "# comes from the sizing planner; change the spec and render again.\n")
    return header + yaml.dump(values, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True,
                              width=100)
