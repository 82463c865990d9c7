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
(`record_autoscaling_stats`), with its share of the requests waiting for its
model in the routers' queues (learnt from the registry's heartbeat answer),
which serving/autoscaling.py turns into a replica count.

A hung engine (alive, so vLLM's `/health` passes, but producing nothing)
is noticed here: while requests are in flight, the engine's own token
counters must move within `router.engine_stall_s`; otherwise `/health`
answers 503 and the replica leaves the registry, and routers retry what
waits on it elsewhere. It returns by itself once the counters move again.

Only routers may use the data plane: every request except the health and
metrics probes must carry the data-plane credential (the environment
variable named by `router.data_plane_token_env`, generated per run by
`govllm serve`, from a Secret on Kubernetes), or it is answered 401 without
reaching the engine. Authentication, quotas, confidentiality routing and
the audit trail therefore cannot be bypassed by calling a replica's port.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import time
from typing import Any

from ray import serve
from ray.serve.llm.deployment import LLMServer

from serving.autoscaling import ONGOING_METRIC, QUEUED_METRIC
from serving.logs import attach_to_serve_logs
from serving.model_kinds import OPERATION_PATHS
from serving.observability.tracing.logs import quiet_export_logs
from serving.registry import HEARTBEAT_S

logger = logging.getLogger("govllm.llm_server")

#: Requests that occupy the engine; health and metrics probes do not count as load.
_GENERATION_PATHS = frozenset(OPERATION_PATHS.values())
#: Probes that reveal nothing and change nothing: answered without the credential.
_OPEN_PATHS = frozenset({"/health", "/metrics"})
_DENIED = json.dumps({"error": {
    "message": "This is a model replica's internal port; send requests to the govllm API instead.",
    "type": "authentication_error", "param": None, "code": "data_plane_credential_required",
}}).encode()


_STALLED = json.dumps({"error": {
    "message": "The engine has requests but has produced no token for too long.",
    "type": "server_error", "param": None, "code": "engine_stalled",
}}).encode()


def engine_progress() -> float | None:
    """Tokens the engine in this process has processed (vLLM's prompt + generation counters).

    None when vLLM's Prometheus metrics are not in this process (metrics_exporter "ray").
    """
    from prometheus_client import REGISTRY

    total, found = 0.0, False
    for name in ("vllm:generation_tokens", "vllm:prompt_tokens"):
        collector = REGISTRY._names_to_collectors.get(name)  # one metric, not the whole registry
        if collector is None:
            continue
        for family in collector.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    total += sample.value
                    found = True
    return total if found else None


class StallWatch:
    """Whether an engine with requests in flight has stopped making progress.

    The clock starts at the later of the last movement of the engine's token counters and the
    arrival of the oldest request still in flight: time the engine sat idle before a request
    came is not time that request waited (counting it declared a healthy engine stalled two
    seconds into its first slow request after a quiet spell).
    """

    def __init__(self, stall_s: float, progress=engine_progress):
        self._stall_s = stall_s
        self._progress = progress
        self._last: float | None = None
        self._since = 0.0

    def stalled(self, waiting_since: float | None, now: float) -> bool:
        """`waiting_since`: when the oldest request in flight arrived (None: none in flight)."""
        progress = self._progress()
        if progress is None or waiting_since is None or progress != self._last:
            self._last, self._since = progress, now
            return False
        return now - max(self._since, waiting_since) >= self._stall_s


class DataPlaneGate:
    """ASGI wrapper: the data-plane credential check, the count of generation requests, and
    the replica's own health verdict on `/health` (503 while its engine is stalled)."""

    def __init__(self, app: Any, token: str):
        if not token:
            raise ValueError("the data-plane credential is empty")
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._arrivals: dict[int, float] = {}  # generation requests in flight -> arrival, oldest first
        self._next = 0
        self.stalled = False

    @property
    def ongoing(self) -> int:
        """Generation requests in flight (what the replica reports as its load)."""
        return len(self._arrivals)

    @property
    def waiting_since(self) -> float | None:
        """When the oldest generation request still in flight arrived; None when idle."""
        return next(iter(self._arrivals.values()), None)

    def _authorised(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/health" and self.stalled:
            await _send_json(send, 503, _STALLED)
            return
        if path not in _OPEN_PATHS and not self._authorised(scope):
            await _send_json(send, 401, _DENIED, [(b"www-authenticate", b"Bearer")])
            return
        if path not in _GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        ticket, self._next = self._next, self._next + 1
        self._arrivals[ticket] = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            del self._arrivals[ticket]


async def _send_json(send, status: int, body: bytes, extra: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


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
        data_plane_token_env: str = "GOVLLM_DATA_PLANE_TOKEN",
        engine_stall_s: float = 120.0,
        **kwargs,
    ):
        attach_to_serve_logs()  # govllm's records in this replica's Serve log
        if llm_config.engine_kwargs.get("otlp_traces_endpoint"):  # vLLM exports its request spans
            quiet_export_logs()  # one line a minute while the collector is down, not one per span
        token = os.environ.get(data_plane_token_env, "")
        if not token:  # refuse to start an open data plane
            raise RuntimeError(
                f"{data_plane_token_env} is not set on this node: the data plane needs the router's "
                "credential (govllm serve generates one per run; on Kubernetes it comes from the "
                "chart's dataPlane.existingSecret)"
            )
        await super().__init__(llm_config, **kwargs)
        import uvicorn

        app = await self.engine.build_asgi_app()
        self._gate = DataPlaneGate(app, token)
        self._stall = StallWatch(engine_stall_s)
        self._queued_share = 0.0  # of the requests waiting in the routers (registry heartbeat)
        sock = socket.socket(socket.AF_INET6 if ":" in data_plane_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((data_plane_host, data_plane_port))
        sock.listen(2048)
        port = sock.getsockname()[1]
        self._url = f"http://{advertised_host(data_plane_host)}:{port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                self._gate,
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
        """Advertise the data plane while the engine is alive; leave the registry when it is not.

        Ray restarts a replica whose engine died only after its own health checks fail
        (tens of seconds); routers must stop sending to it at once.
        """
        while True:
            stalled = self._stall.stalled(self._gate.waiting_since, time.monotonic())
            if stalled != self._gate.stalled:
                logger.error("engine of %s %s", self._model_id,
                             "has stalled: requests wait but no token comes" if stalled else "makes progress again")
                self._gate.stalled = stalled
            try:
                if stalled:
                    raise RuntimeError("engine stalled")
                await self.engine.check_health()
            except Exception:
                logger.error("engine of %s is not healthy; leaving the endpoint registry", self._model_id)
                try:
                    await self._registry.deregister.remote(self._replica_id)
                except Exception:
                    pass
                await asyncio.sleep(HEARTBEAT_S)
                continue
            try:
                self._queued_share = float(await self._registry.heartbeat.remote(
                    self._model_id, self._replica_id, self._url, self._gate.ongoing
                ) or 0.0)
            except Exception as exc:  # the registry restarts; keep beating
                logger.warning("endpoint registry heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """In-flight data-plane requests, and this replica's share of those waiting for its
        model in the routers' queues (the registry's heartbeat answer)."""
        return {ONGOING_METRIC: float(self._gate.ongoing),
                QUEUED_METRIC: self._queued_share}

    async def wake(self) -> bool:
        """Does nothing: routers call it through this deployment's Serve handle to wake an
        on-demand model at zero replicas. While no replica exists the call waits in the
        handle's queue, which Serve's autoscaler counts (serving/router/cold_start.py)."""
        return True

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

