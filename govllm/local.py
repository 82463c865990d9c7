"""`govllm serve`: run a cluster spec on a local (or existing) Ray cluster.

Steps: validate the spec, generate missing development models, create the
development API key, start Ray and the Serve application, wait until the
router reports every model ready, print where everything is, then serve
until SIGINT/SIGTERM and shut Serve and Ray down (HAProxy, replicas and
engine processes included).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console

from cluster import devmodels
from cluster.render.serve_config import (
    app_args,
    audit_settings,
    dev_model_dir,
    state_dir,
    store_settings,
)
from cluster.spec.schema import ClusterSpec
from govllm import embedded_store, runtime_env
from serving import serve_env
from serving.app_args import AppArgs
from serving.store import StoreKeyspace, sync_client
from serving.tenancy.keystore import KeyAdmin, ensure_dev_key

console = Console(stderr=True, highlight=False)

RUN_FILE = "run/serve.json"


def prepare_models(spec: ClusterSpec) -> None:
    """Generate every development model the spec names that is missing or outdated."""
    for model in spec.models:
        src = model.source.dev_model
        if src is None:
            continue
        shape = devmodels.DevModelShape(
            family=src.family, seed=src.seed, max_position_embeddings=src.max_position_embeddings,
            head="classify" if model.kind == "rerank" else "lm",
        )
        path = dev_model_dir(spec, model)
        if devmodels.is_current(path, shape):
            continue
        console.print(f"[govllm] generating development model {model.id} ({src.family}) in {path}")
        devmodels.generate(path, shape)


def wait_ready(url: str, timeout_s: float, *, report=None, interval_s: float = 10.0,
               detail=None) -> dict:
    """Poll /readyz until it answers 200 or `timeout_s` passes; returns its body.

    Every `interval_s` (and whenever it changes) `report` gets a line saying what is still
    awaited: the router itself, or the models without a ready replica; `detail()` may add
    Serve's own view (deployments still starting, and why).
    """
    start = time.monotonic()
    deadline = start + timeout_s
    last: dict = {}
    said, said_at = "", 0.0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            last = json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            last = {}
        now = time.monotonic()
        state = awaiting(last)
        if report is not None and (state != said or now - said_at >= interval_s):
            extra = detail() if detail is not None else ""
            report(f"[govllm] waiting for readiness ({now - start:.0f} s of {timeout_s:.0f} s): "
                   f"{state}{'; ' + extra if extra else ''}")
            said, said_at = state, now
        time.sleep(0.5)
    raise TimeoutError(f"router at {url} not ready after {timeout_s:.0f}s: {awaiting(last)}; "
                       f"last /readyz: {last}")


def awaiting(readyz: dict) -> str:
    """What a not-ready /readyz body says is missing, in words."""
    if not readyz:
        return "the router does not answer yet (Serve is starting its replica)"
    models = readyz.get("models") or {}
    waiting = sorted(m for m, v in models.items() if not (v or {}).get("ready_replicas"))
    parts = []
    if waiting:
        parts.append(f"model(s) without a ready replica: {', '.join(waiting)} (engines loading)")
    if readyz.get("registry_age_s", 0) and readyz.get("registry_age_s", 0) >= 10:
        parts.append(f"the router's endpoint view is {readyz['registry_age_s']} s old")
    return "; ".join(parts) or "the router reports not ready"


def _serve_detail(app_name: str) -> str:
    """Serve's deployments that are not running yet, with Serve's message (best effort)."""
    try:
        from ray import serve

        app = serve.status().applications.get(app_name)
    except Exception:
        return ""
    if app is None:
        return "Serve has not deployed the application yet"
    pending = [f"{name} {d.status}" + (f" ({d.message})" if d.message else "")
               for name, d in app.deployments.items() if str(d.status) not in ("HEALTHY", "DeploymentStatus.HEALTHY")]
    return ("Serve: " + ", ".join(pending)) if pending else ""


def serve(spec: ClusterSpec, spec_dir: Path, *, ready_timeout_s: float = 600.0) -> int:
    if spec.ray.address is None and _port_in_use(spec.router.host, spec.router.port):
        console.print(
            f"[red]port {spec.router.port} on {spec.router.host} is already in use[/]: stop the other "
            "server (another `govllm serve`?) or pick a port with --port"
        )
        return 1
    sdir = state_dir(spec)
    run_dir = sdir / "run"
    runtime_env.apply(runtime_env.serve_environment(run_dir))
    runtime_env.apply(serve_env.haproxy_environment(
        spec.router.request_header_timeout_s,
        str(Path(sys.executable).with_name(serve_env.HAPROXY_WRAPPER)),
    ))
    if spec.ray.address is None:
        # The data-plane credential of this run (unless the operator exported one): the local
        # Ray cluster inherits this process's environment, so routers and model replicas share
        # it and nobody else has it.
        os.environ.setdefault(spec.router.data_plane_token_env, secrets.token_urlsafe(32))
    elif not os.environ.get(spec.router.data_plane_token_env):
        console.print(f"[red]{spec.router.data_plane_token_env} is not set[/]: joining an existing Ray "
                      "cluster needs the data-plane credential its nodes were started with")
        return 1
    prepare_models(spec)
    args = app_args(spec, spec_dir)
    redis = None
    if spec.store.embedded:
        console.print(f"[govllm] starting the embedded store (Redis) on 127.0.0.1:{spec.store.port}")
        try:
            redis = embedded_store.SupervisedRedis(
                sdir / "redis", spec.store.port,
                on_restart=lambda code: console.print(
                    f"[yellow][govllm] the embedded store exited ({code}); restarted[/]"),
            )
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/]")
            return 1
    try:
        return _serve(spec, sdir, args, ready_timeout_s)
    finally:
        if redis is not None:
            redis.stop()


def _dev_key(spec: ClusterSpec, sdir: Path) -> tuple[Path | None, bool]:
    if not (spec.auth.enabled and spec.auth.dev_tenant):
        return None, False
    settings = store_settings(spec)
    client = sync_client(settings)
    try:
        key_path = sdir / "dev-api-key"
        created = ensure_dev_key(KeyAdmin(client, StoreKeyspace(settings.namespace)),
                                 tenant=spec.auth.dev_tenant, key_path=key_path)
        return key_path, created
    finally:
        client.close()


def _serve(spec: ClusterSpec, sdir: Path, args: AppArgs, ready_timeout_s: float) -> int:
    key_path, created = _dev_key(spec, sdir)

    import ray
    from ray import serve

    from serving.app import build_app

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    console.print(f"[govllm] starting Ray and the Serve application '{spec.name}' ...")
    ray.init(
        # Without an address Ray joins the most recently started local cluster (if any);
        # "local" always starts this stack's own, so two stacks never share one by accident.
        address=spec.ray.address or "local",
        num_cpus=spec.ray.num_cpus if spec.ray.address is None else None,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    url = f"http://{spec.router.host}:{spec.router.port}"
    run_file = sdir / RUN_FILE
    try:
        serve.start(http_options={"host": spec.router.host, "port": spec.router.port})
        serve.run(build_app(args), name=spec.name, route_prefix="/", blocking=False)
        ready = wait_ready(url, ready_timeout_s, report=lambda line: console.print(line, markup=False),
                           detail=lambda: _serve_detail(spec.name))
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "app": spec.name,
                    "api_url": url,
                    "ray_address": ray.get_runtime_context().gcs_address,
                    "metrics_urls": _metrics_urls(ray),
                    "ray_auth_mode": "token" if spec.ray.address is None else os.environ.get("RAY_AUTH_MODE"),
                }
            )
        )
        _print_banner(spec, url, ready, key_path, created)
        while not stop.wait(1.0):
            pass
        console.print("[govllm] shutting down ...")
        return 0
    finally:
        run_file.unlink(missing_ok=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        console.print("[govllm] stopped.")


def args_audit_dir(spec: ClusterSpec) -> str:
    audit = audit_settings(spec)
    return audit.spool_dir if audit else "(disabled)"


def _metrics_urls(ray) -> list[str]:
    """Prometheus endpoints of the Ray nodes (engine, Serve and router metrics)."""
    return [
        f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
        for n in ray.nodes()
        if n.get("Alive") and n.get("MetricsExportPort")
    ]


def _port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _print_banner(spec: ClusterSpec, url: str, ready: dict, key_path: Path | None, created: bool) -> None:
    aliases = spec.all_aliases()
    console.print(f"\n[bold green]govllm is serving[/] the OpenAI API at [bold]{url}/v1[/]")
    for model in spec.models:
        names = [a for a, t in aliases.items() if model.id in t]
        replicas = ready.get("models", {}).get(model.id, {}).get("ready_replicas", "?")
        console.print(
            f"  model [bold]{model.id}[/] ({model.family or 'unknown family'}; "
            f"aliases: {', '.join(names) or 'none'}; ready replicas: {replicas})"
        )
    if key_path is not None:
        state = "created" if created else "kept"
        console.print(f"  development API key for tenant {spec.auth.dev_tenant} ({state}): {key_path}")
        console.print(f"    {key_path.read_text().strip()}")
        console.print(
            f"  try: curl {url}/v1/models -H \"Authorization: Bearer $(cat {key_path})\""
        )
    if spec.audit.enabled:
        console.print(f"  audit trail: encrypted, spooled in {args_audit_dir(spec)}")
    console.print("  health: /healthz   readiness: /readyz   stop: Ctrl-C\n")
    sys.stderr.flush()
