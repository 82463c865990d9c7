"""`govllm status`: ask the running application what it is serving."""

from __future__ import annotations

import json
import os

from cluster.render.serve_config import state_dir
from cluster.spec.schema import ClusterSpec
from govllm.local import RUN_FILE
from serving import deployment_names


def collect(spec: ClusterSpec) -> dict:
    run_file = state_dir(spec) / RUN_FILE
    if not run_file.is_file():
        raise RuntimeError(f"no running govllm found ({run_file} is missing); start one with `govllm serve`")
    run = json.loads(run_file.read_text())
    # A local cluster started by `govllm serve` uses Ray's token authentication; the
    # token is in ~/.ray/auth_token and a client must be told to present it.
    if run.get("ray_auth_mode"):
        os.environ.setdefault("RAY_AUTH_MODE", run["ray_auth_mode"])
    import ray
    from ray import serve

    ray.init(address=run["ray_address"], log_to_driver=False, configure_logging=False)
    try:
        app_status = serve.status().applications.get(run["app"])
        registry = serve.get_deployment_handle(deployment_names.REGISTRY, app_name=run["app"])
        endpoints = registry.snapshot.remote().result(timeout_s=30)
    finally:
        ray.shutdown()
    return {
        "app": run["app"],
        "api_url": run["api_url"],
        "status": getattr(app_status.status, "value", str(app_status.status)) if app_status else "NOT_RUNNING",
        "endpoints": endpoints,
        "vendor_endpoints": _vendor_endpoints(run["api_url"]),
        "metrics_urls": run.get("metrics_urls", []),
    }


def _vendor_endpoints(api_url: str) -> dict:
    """Vendor endpoints and their circuit state, as a router replica sees them (/readyz)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(api_url + "/readyz", timeout=10) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:  # 503 while not ready still carries the report
        body = exc.read()
    except OSError as exc:
        return {"error": f"router unreachable ({type(exc).__name__})"}
    try:
        return json.loads(body).get("vendor_endpoints") or {}
    except (ValueError, AttributeError):
        return {}
