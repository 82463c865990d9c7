"""The model deployment: Ray Serve LLM's LLMServer with an HTTP data plane.

Ray Serve LLM hands requests to the engine through Ray actor calls and
streams results back as Ray objects, one per chunk. On this project's
machines that costs milliseconds per chunk (docs/benchmarks.md), more than
generating the token. So each replica also serves vLLM's own OpenAI ASGI app
(the app `vllm serve` runs, built by Ray Serve LLM's engine wrapper) on a
data-plane port, and the router forwards requests there over HTTP: the
engine, the request validation and the SSE encoding stay exactly vLLM's,
while Ray keeps doing what it is good at, placing, health-checking and
scaling replicas.

Because data-plane requests bypass Serve's request accounting, the replica
reports its own in-flight count as a custom autoscaling metric
(`record_autoscaling_stats`), which serving/autoscaling.py turns into a
replica count.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from ray import serve
from ray.serve.llm.deployment import LLMServer

from serving.autoscaling import ONGOING_METRIC
from serving.registry import HEARTBEAT_S

logger = logging.getLogger("govllm.llm_server")

#: Requests that occupy the engine; health and metrics probes do not count as load.
_GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


class _OngoingCounter:
    """ASGI wrapper counting generation requests currently in the replica."""

    def __init__(self, app: Any):
        self.app = app
        self.ongoing = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in _GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        self.ongoing += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.ongoing -= 1


def advertised_host(bind_host: str) -> str:
    """The address other nodes reach this replica at."""
    if bind_host not in ("0.0.0.0", "::"):
        return bind_host
    import ray.util

    return ray.util.get_node_ip_address()


class DataPlaneLLMServer(LLMServer):
    """LLMServer that also serves vLLM's OpenAI app on its own port."""

    async def __init__(
        self,
        llm_config,
        *,
        registry=None,
        data_plane_host: str = "127.0.0.1",
        data_plane_port: int = 0,
        **kwargs,
    ):
        await super().__init__(llm_config, **kwargs)
        import uvicorn

        app = await self.engine.build_asgi_app()
        self._counter = _OngoingCounter(app)
        sock = socket.socket(socket.AF_INET6 if ":" in data_plane_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((data_plane_host, data_plane_port))
        sock.listen(2048)
        port = sock.getsockname()[1]
        self._url = f"http://{advertised_host(data_plane_host)}:{port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                self._counter,
                http="httptools",
                loop="none",
                lifespan="on",
                log_level="warning",
                access_log=False,
                timeout_keep_alive=75,
                timeout_graceful_shutdown=30,
            )
        )
        self._server.install_signal_handlers = lambda: None  # Ray owns the process's signals
        self._server_task = asyncio.get_running_loop().create_task(self._server.serve([sock]))
        while not self._server.started:
            if self._server_task.done():
                self._server_task.result()  # raises the startup error
            await asyncio.sleep(0.05)
        ctx = serve.get_replica_context()
        self._replica_id = ctx.replica_id.unique_id
        self._model_id = llm_config.model_id
        self._registry = registry
        self._heartbeat_task = (
            asyncio.get_running_loop().create_task(self._heartbeat()) if registry else None
        )
        logger.info("model %s serves its data plane at %s", self._model_id, self._url)

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._registry.heartbeat.remote(
                    self._model_id, self._replica_id, self._url, self._counter.ongoing
                )
            except Exception as exc:  # the registry restarts; keep beating
                logger.warning("endpoint registry heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def data_plane_url(self) -> str:
        return self._url

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {ONGOING_METRIC: float(self._counter.ongoing)}

    async def check_health(self) -> None:
        if self._server_task.done():
            raise RuntimeError(f"data-plane server of {self._model_id} stopped")
        await super().check_health()

    async def __del__(self) -> None:
        """Leave the registry first, then drain in-flight requests, then stop the engine."""
        if getattr(self, "_heartbeat_task", None):
            self._heartbeat_task.cancel()
            try:
                await self._registry.deregister.remote(self._replica_id)
            except Exception:
                pass
        server = getattr(self, "_server", None)
        if server is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(self._server_task, timeout=35)
            except Exception:
                pass
        await super().__del__()

