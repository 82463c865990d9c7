"""The router as a Ray Serve ingress deployment.

`serve.ingress()` with a late-bound `__serve_build_asgi_app__` lets Serve run
the raw ASGI RouterApp directly: with Serve's direct-ingress/HAProxy data
path each router replica serves HTTP on its own port and HAProxy balances
across replicas, so no Ray actor call sits between a client and the router.
The replica's background tasks keep its view of model endpoints and API keys
fresh; neither touches the request path.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ray import serve

from serving.config import ServingConfig
from serving.keys import FileKeyStore
from serving.router.app import build_router_app

logger = logging.getLogger("govllm.router")


@serve.ingress()
class Router:
    async def __init__(self, config: dict, registry, models: dict | None = None) -> None:
        # `models` (handles to the LLM deployments) makes Serve deploy them as part of this
        # application; requests never use them, the data plane is HTTP.
        self._model_handles = models or {}
        self._config = ServingConfig.model_validate(config)
        self._keys = FileKeyStore(Path(self._config.auth.key_store_path))
        self._app = build_router_app(self._config, self._keys)
        self._registry = registry
        await self._refresh_endpoints()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self._config.router.registry_refresh_s, self._refresh_endpoints)),
            loop.create_task(self._every(self._config.auth.reload_interval_s, self._reload_keys)),
        ]

    async def __serve_build_asgi_app__(self):
        return self._app

    async def _refresh_endpoints(self) -> None:
        snapshot = await self._registry.snapshot.remote()
        self._app.table.update(snapshot)

    async def _reload_keys(self) -> None:
        if self._keys.reload():
            logger.info("API key store reloaded from %s", self._config.auth.key_store_path)

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
        app = getattr(self, "_app", None)
        if app is not None:
            await app.dispatcher.close()
