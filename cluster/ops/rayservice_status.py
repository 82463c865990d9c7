"""`govllm status --context`: the RayService as KubeRay and the router see it.

`summarize` is a pure function over the RayService object, the release's pods and the
router's /readyz body (read through the API server's service proxy), so it is tested on
canned API JSON. Deployment names: serving/deployment_names.py.
"""

from __future__ import annotations

from typing import Any

from serving.deployment_names import MODEL_PREFIX, model_deployment


def _condition(rs: dict, kind: str) -> dict | None:
    return next((c for c in rs.get("status", {}).get("conditions", []) if c.get("type") == kind),
                None)


def _pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))


def summarize(rs: dict, pods: list[dict], readyz: dict | None, *, readyz_error: str = "",
              planned: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """One report: service state, clusters (active/pending), pods per group, per-model readiness.

    Args:
        rs: the RayService object.
        pods: the release's pods (label govllm.io/spec=<name>).
        readyz: the router's /readyz body, or None when it could not be read (`readyz_error`).
        planned: model id -> (min, max) replicas from the plan, when the spec is at hand.
    """
    status = rs.get("status", {})
    ready = _condition(rs, "Ready")
    upgrading = _condition(rs, "UpgradeInProgress")
    app_name = rs["metadata"]["name"]
    active = status.get("activeServiceStatus", {}) or {}
    pending = status.get("pendingServiceStatus", {}) or {}
    app = (active.get("applicationStatuses") or {}).get(app_name, {})
    deployments = app.get("serveDeploymentStatuses") or {}
    routed = (readyz or {}).get("models", {})
    model_ids = sorted(set(routed) | set(planned or {}) | {
        k[len(MODEL_PREFIX):] for k in deployments if k.startswith(MODEL_PREFIX)})
    models = {}
    for mid in model_ids:
        dep = deployments.get(model_deployment(mid)) or deployments.get(MODEL_PREFIX + mid) or {}
        entry: dict[str, Any] = {
            "deployment_status": dep.get("status", "UNKNOWN"),
            "ready_replicas": routed.get(mid, {}).get("ready_replicas") if readyz else None,
        }
        if dep.get("message"):
            entry["message"] = dep["message"]
        if planned and mid in planned:
            entry["planned_replicas"] = {"min": planned[mid][0], "max": planned[mid][1]}
        models[mid] = entry
    groups: dict[str, dict[str, int]] = {}
    for pod in pods:
        labels = pod["metadata"].get("labels", {})
        group = labels.get("ray.io/group", "headgroup" if labels.get("ray.io/node-type") == "head" else "?")
        counts = groups.setdefault(group, {"pods": 0, "ready": 0})
        counts["pods"] += 1
        counts["ready"] += _pod_ready(pod)
    return {
        "rayservice": app_name,
        "ready": bool(ready and ready.get("status") == "True"),
        "reason": (ready or {}).get("reason") or status.get("serviceStatus", ""),
        "upgrade_in_progress": bool(upgrading and upgrading.get("status") == "True"),
        "serve_endpoints": status.get("numServeEndpoints", 0),
        "application_status": app.get("status", "UNKNOWN"),
        "active_cluster": active.get("rayClusterName"),
        "pending_cluster": pending.get("rayClusterName"),
        "router_readyz": (readyz or {}).get("status") if readyz else f"unavailable ({readyz_error})",
        "pods": groups,
        "models": models,
    }


def format_report(report: dict[str, Any]) -> list[str]:
    lines = [f"RayService {report['rayservice']}: {'READY' if report['ready'] else 'NOT READY'} "
             f"({report['reason'] or 'no reason given'}); application {report['application_status']}; "
             f"{report['serve_endpoints']} serve endpoint(s)"]
    lines.append(f"  cluster {report['active_cluster']}"
                 + (f", upgrading to {report['pending_cluster']}" if report["pending_cluster"] else ""))
    for group, c in sorted(report["pods"].items()):
        lines.append(f"  pods {group}: {c['ready']}/{c['pods']} ready")
    lines.append(f"  router /readyz: {report['router_readyz']}")
    for mid, m in report["models"].items():
        replicas = "?" if m["ready_replicas"] is None else m["ready_replicas"]
        bounds = m.get("planned_replicas")
        plan = f" (plan {bounds['min']}-{bounds['max']})" if bounds else ""
        msg = f": {m['message']}" if m.get("message") else ""
        lines.append(f"  model {mid}: {m['deployment_status']}, ready replicas {replicas}{plan}{msg}")
    return lines
