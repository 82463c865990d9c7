"""The router as a Ray Serve ingress deployment.

`serve.ingress()` with a late-bound `__serve_build_asgi_app__` lets Serve run
the raw ASGI RouterApp directly: with Serve's direct-ingress/HAProxy data
path each router replica serves HTTP on its own port and HAProxy balances
across replicas, so no Ray actor call sits between a client and the router.

Each replica assembles the request path from the tenancy parts (key cache,
OIDC verifier, confidentiality policy, quota ledger, audit trail) and runs
their background work: endpoint refresh (which is also the router's own
heartbeat), replica health probes, key-change subscription, JWKS refresh,
deferred quota settlements, audit writer and uploader threads. None of it
touches the request path.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ray import serve

from serving.config import ServingConfig
from serving.logs import attach_to_serve_logs
from serving.router.app import RouterApp
from serving.router.cold_start import ColdStart
from serving.router.dispatch import STALLED_CLIENT_CHECK_S
from serving.router.endpoints import EndpointTable
from serving.router.metrics import MetricsSampler, RouterMetrics
from serving.router.request_path import build_request_path
from serving.store import StoreKeyspace, async_client
from serving.vendor.contract import ContractLimiter

logger = logging.getLogger("govllm.router")


@serve.ingress()
class Router:
    async def __init__(self, config: dict, registry, models: dict | None = None) -> None:
        # `models` (handles to the LLM deployments) is bound so that Serve deploys them as part
        # of this application; requests never use them (the data plane is HTTP). They only wake
        # an on-demand model at zero replicas (serving/router/cold_start.py).
        attach_to_serve_logs()  # the access log and govllm's warnings in this replica's Serve log
        cfg = ServingConfig.model_validate(config)
        self._config = cfg
        self._registry = registry
        metrics = RouterMetrics()
        keys = StoreKeyspace(cfg.store.namespace)
        self._redis = async_client(cfg.store)
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        path = build_request_path(cfg, self._redis, keys, chain_hint=self._replica_id, metrics=metrics)
        self._key_cache, oidc, quota, self._audit = path.key_cache, path.oidc, path.quota, path.audit
        try:
            await self._key_cache.load()
        except Exception as exc:  # the watcher keeps trying; until then no key is accepted
            logger.warning("shared store unreachable at start (%s): API keys load when it answers", exc)
        token = os.environ.get(cfg.router.data_plane_token_env)
        if not token:
            raise RuntimeError(
                f"{cfg.router.data_plane_token_env} is not set on this node: model replicas refuse "
                "requests without the data-plane credential (govllm serve generates one per run; "
                "on Kubernetes it comes from the chart's dataPlane.existingSecret)"
            )
        self._tracer = None
        if cfg.tracing.enabled:  # OpenTelemetry only when the spec turns tracing on
            from serving.observability.tracing.spans import build_tracer

            self._tracer = build_tracer(cfg.tracing, app=cfg.app_name, instance=self._replica_id)
        self._app = RouterApp(
            cfg,
            table=EndpointTable(),
            path=path,
            data_plane_token=token,
            tracer=self._tracer,
            contracts={m.id: ContractLimiter(m.id, m.endpoint.limits, self._redis, keys,
                                             timeout_s=cfg.store.timeout_s)
                       for m in cfg.models if m.endpoint is not None and m.endpoint.limits},
        )
        on_demand = {m.id for m in cfg.models if m.on_demand}
        if on_demand:
            self._app.dispatcher.cold_start = ColdStart(
                self._app.table, {k: v for k, v in (models or {}).items() if k in on_demand},
                wait_s=cfg.router.cold_start_wait_s)
        await self._refresh_endpoints()
        loop = asyncio.get_running_loop()
        background = [
            self._every(cfg.router.registry_refresh_s, self._refresh_endpoints),
            self._every(cfg.router.replica_probe_interval_s, self._app.dispatcher.probe_once),
            self._every(STALLED_CLIENT_CHECK_S, self._app.dispatcher.cut_stalled_clients),
            quota.retry_deferred(),
            MetricsSampler(metrics, router=self._replica_id, admission=self._app.admission,
                           table=self._app.table, dispatcher=self._app.dispatcher, ledger=quota,
                           store=self._redis, keys=keys, tenants=cfg.tenants, audit=self._audit).run(),
        ]
        if cfg.auth.enabled:
            background.append(self._key_cache.watch())
        if oidc is not None:
            background.append(oidc.watch())
        self._tasks = [loop.create_task(job) for job in background]

    async def __serve_build_asgi_app__(self):
        return self._app

    async def _refresh_endpoints(self) -> None:
        queued = {m: len(g.waiters) for m, g in self._app.admission.gates.items() if len(g.waiters)}
        view = await self._registry.router_view.remote(self._replica_id,
                                                       self._app.table.take_reports(), queued)
        self._app.table.update(view["endpoints"], routers=view["routers"])
        self._app.admission.resize()

    @staticmethod
    async def _every(interval_s: float, job) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception as exc:  # keep the last good view; try again next round
                logger.warning("background refresh %s failed: %s", job.__name__, exc)

    async def check_health(self) -> None:
        for task in self._tasks:
            if task.done():
                raise RuntimeError(f"router background task stopped: {task}")

    async def __del__(self) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        if getattr(self, "_registry", None) is not None and getattr(self, "_replica_id", None):
            try:
                await self._registry.forget_router.remote(self._replica_id)
            except Exception:
                pass
        app = getattr(self, "_app", None)
        if app is not None:
            if app.dispatcher.cold_start is not None:
                await app.dispatcher.cold_start.close()
            await app.dispatcher.close()
        if getattr(self, "_audit", None) is not None:
            await asyncio.to_thread(self._audit.close)
        if getattr(self, "_tracer", None) is not None:  # flush what is queued, bounded
            await asyncio.to_thread(self._tracer.shutdown)
        if getattr(self, "_redis", None) is not None:
            await self._redis.aclose()
