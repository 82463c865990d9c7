"""docs/examples/plamo-2-8b.yaml (docs/operations.md, "A self-hosted engine govllm's vLLM cannot
run") kept honest: valid Kubernetes objects, in agreement with the spec entry that registers
the engine as an endpoint, and NetworkPolicies that, together with the chart's rendered ones,
let exactly the release's Ray pods reach it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from cluster.render.helm_values import helm_values, render_text
from cluster.spec.schema import load_spec
from tests.component.test_helm_chart import (
    KUBE_VERSIONS,
    NAMESPACE,
    SITE,
    SPEC,
    direction_allows,
    of_kind,
    pod,
    rayservice,
    release_pods,
    template,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "plamo-2-8b.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
MODEL = "plamo-2-8b"


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def entry():
    spec, _ = load_spec(SPEC)
    (model,) = [m for m in spec.endpoints() if m.id == MODEL]
    return model


def engine(objects: dict) -> dict:
    (c,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def flags(container: dict) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)


def test_every_object_passes_kubernetes_validate_strict(objects):
    """kubernetes-validate's own API (the CLI's check, in process), every supported version."""
    assert set(objects) == {"Namespace", "ServiceAccount", "Deployment", "Service", "NetworkPolicy"}
    for version in KUBE_VERSIONS:
        for doc in objects.values():
            kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field
    typo = copy.deepcopy(objects["Deployment"])
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "IfNotPresent"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolicyy"):
        kubernetes_validate.validate(typo, KUBE_VERSIONS[0], strict=True)


def test_the_engine_is_the_last_vllm_that_runs_plamo_2(objects):
    """The pinned vLLM names the last release with the architecture; the example runs it."""
    from vllm.model_executor.models.registry import _PREVIOUSLY_SUPPORTED_MODELS

    image = engine(objects)["image"]
    repo, _, rest = image.partition(":")
    tag, _, digest = rest.partition("@")
    assert repo == "vllm/vllm-openai"
    assert tag == "v" + _PREVIOUSLY_SUPPORTED_MODELS["Plamo2ForCausalLM"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)  # pinned (a placeholder to replace)


def test_the_example_agrees_with_the_spec_entry(objects, entry):
    ep = entry.source.endpoint
    url = urlsplit(ep.base_url)
    service, deployment, c = objects["Service"], objects["Deployment"], engine(objects)
    namespace = ep.egress.namespace
    assert url.hostname == f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    for kind in ("ServiceAccount", "Deployment", "Service", "NetworkPolicy"):
        assert objects[kind]["metadata"]["namespace"] == namespace == objects["Namespace"]["metadata"]["name"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert ep.egress.pod_labels.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    # NetworkPolicies see the pod's port: Service port = target = container port = base_url's
    assert port["port"] == port["targetPort"] == ep.port == c["ports"][0]["containerPort"]
    f = flags(c)
    assert int(f["port"]) == ep.port
    assert f["served-model-name"] == ep.upstream_model
    assert int(f["max-num-seqs"]) == ep.limits.max_concurrency
    assert int(f["max-model-len"]) == entry.max_model_len
    assert url.scheme == "https" and ep.ca_bundle and {"ssl-certfile", "ssl-keyfile"} <= set(f)
    (key,) = [e for e in c["env"] if e["name"] == "VLLM_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": ep.secret.name, "key": ep.secret.key}
    assert not [e for e in c["env"] if "value" in e and "key" in e["name"].lower()]
    # the weights are staged and verified by govllm before the engine starts
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:3] == ["govllm", "weights", "pull"]
    args = dict(zip(init["command"][3::2], init["command"][4::2], strict=True))
    assert args["--to"] == c["args"][0]


def test_the_docs_spec_block_is_the_example_spec_entry(entry):
    """The block in docs/operations.md is the entry `govllm validate` checks."""
    text = OPERATIONS.read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    (documented,) = [b for b in blocks if isinstance(b, list) and b and b[0].get("id") == MODEL]
    raw = next(m for m in yaml.safe_load(SPEC.read_text())["models"] if m["id"] == MODEL)
    assert documented == [raw]


def test_the_engine_pods_are_restricted(objects):
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    assert objects["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] > 0
    assert spec["automountServiceAccountToken"] is False
    for c in spec["initContainers"] + spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert c["resources"]["requests"] == c["resources"]["limits"]
    assert all("hostPath" not in v for v in spec["volumes"])


@pytest.fixture(scope="module")
def chart_docs(tmp_path_factory) -> list[dict]:
    spec, spec_dir = load_spec(SPEC)
    path = tmp_path_factory.mktemp("docs-example") / "plan.yaml"
    path.write_text(render_text(helm_values(spec, spec_dir, source="x"), source="x"))
    return template("-f", str(path), *SITE)


def connects(by_namespace: dict[str, list[dict]], src: dict, dst: dict, port: int) -> bool:
    """src -> dst needs src's namespace's egress and dst's namespace's ingress policies."""
    return (direction_allows(by_namespace.get(src["namespace"], []), src, dst, port, "Egress",
                             src["namespace"])
            and direction_allows(by_namespace.get(dst["namespace"], []), dst, src, port, "Ingress",
                                 dst["namespace"]))


def test_only_the_release_ray_pods_reach_the_engine(objects, entry, chart_docs):
    ep = entry.source.endpoint
    namespace = ep.egress.namespace
    by_namespace = {NAMESPACE: of_kind(chart_docs, "NetworkPolicy"), namespace: [objects["NetworkPolicy"]]}
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    plamo = pod(namespace, labels, "10.244.9.9")
    ray = list(release_pods(rayservice(chart_docs)).values())
    assert len(ray) >= 2
    for src in ray:
        assert connects(by_namespace, src, plamo, ep.port)
        assert not any(connects(by_namespace, src, plamo, p) for p in (22, 8000, 8080, ep.port + 1))
    release = {"app.kubernetes.io/name": "govllm", "app.kubernetes.io/instance": "govllm"}
    others = [
        pod(NAMESPACE, release),  # copies the release's labels but is not a Ray pod
        pod(NAMESPACE, {**release, "app.kubernetes.io/instance": "other", "ray.io/is-ray-node": "yes"}),
        pod("tenant-apps", {**release, "ray.io/is-ray-node": "yes"}),  # the labels, elsewhere
        pod(namespace, {"app": "debug"}),  # a neighbour in the engine's namespace
        pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
    ]
    for src in others:
        assert not connects(by_namespace, src, plamo, ep.port), src
    # the engine calls out only to DNS and the weight bucket, never to the release
    dns = pod("kube-system", {"k8s-app": "kube-dns"})
    bucket = pod("s3", {}, "10.0.1.20")
    assert connects(by_namespace, plamo, dns, 53) and connects(by_namespace, plamo, bucket, 443)
    assert not any(connects(by_namespace, plamo, r, 8000) for r in ray)
    assert not connects(by_namespace, plamo, pod("internet", {}, "192.0.2.10"), 443)


def test_the_cross_namespace_check_can_fail(objects, entry, chart_docs):
    """Without the chart's vendor egress rule the release could not reach the engine."""
    ep = entry.source.endpoint
    policies = of_kind(chart_docs, "NetworkPolicy")
    (egress,) = [p for p in policies if p["metadata"]["name"].endswith("-egress")]
    trimmed = {**egress, "spec": {**egress["spec"], "egress": [
        r for r in egress["spec"]["egress"] if r["ports"][0]["port"] != ep.port]}}
    by_namespace = {NAMESPACE: [p for p in policies if p is not egress] + [trimmed],
                    ep.egress.namespace: [objects["NetworkPolicy"]]}
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    src = next(iter(release_pods(rayservice(chart_docs)).values()))
    assert not connects(by_namespace, src, pod(ep.egress.namespace, labels), ep.port)
