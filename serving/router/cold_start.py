"""Waking an on-demand model that has scaled to zero, and waiting for its first replica.

Requests reach replicas over the HTTP data plane, so a model with no replica has nobody to
report load: Serve's autoscaler would never see demand for it. The router therefore makes
demand visible the way Serve itself counts it: it calls the model deployment's Serve handle
once (`DataPlaneLLMServer.wake`, which does nothing). With zero replicas that call waits in
the handle's queue; the handle reports queued requests to Serve's controller at once (its
"scaled to zero" push), and Serve scales the deployment 0 -> 1 (its cold-start path, and
serving/autoscaling.py counts queued handle requests too). One wake call per model is in
flight at a time, however many requests wait.

The waiting request holds no admission slot and blocks nothing else: it polls this router's
endpoint table (refreshed from the registry every `registry_refresh_s`) until a replica of
one of its candidate models appears, for at most `router.cold_start_wait_s`; then it is
answered 503 `model_starting` with a Retry-After estimated from the last cold start seen.
When another candidate of the request (an alias's fallback) has a replica, the request goes
there at once and the on-demand model is woken in the background for later requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from serving.config import ModelRoute
from serving.request import APIError
from serving.router.endpoints import EndpointTable

logger = logging.getLogger("govllm.router.cold_start")

#: How often a waiting request looks at the endpoint table (it is refreshed about every second).
POLL_S = 0.1


class ColdStart:
    """Wakes on-demand models at zero replicas and lets requests wait, bounded, for them."""

    def __init__(self, table: EndpointTable, handles: dict[str, Any], *, wait_s: float,
                 poll_s: float = POLL_S, clock=time.monotonic):
        self._table = table
        self._handles = handles
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._clock = clock
        self._waking: dict[str, asyncio.Task] = {}
        self._woken_at: dict[str, float] = {}
        #: Seconds from wake to the first replica in the table, per model (the last one seen).
        self.last_cold_start_s: dict[str, float] = {}

    def _asleep(self, model: ModelRoute) -> bool:
        return (model.on_demand and model.id in self._handles
                and self._table.replica_count(model.id) == 0)

    def _live(self, candidates: Sequence[ModelRoute]) -> bool:
        return any(self._table.replica_count(m.id) > 0 for m in candidates)

    async def ready(self, candidates: Sequence[ModelRoute]) -> None:
        """Return once a candidate has a replica; wake sleeping ones; 503 after the bound.

        Returns at once (no wait, no wake) when no candidate is an on-demand model at zero;
        the admission step then decides as usual.
        """
        asleep = [m for m in candidates if self._asleep(m)]
        if not asleep:
            return
        for model in asleep:
            self._wake(model.id)
        if self._live(candidates):
            return
        start = self._clock()
        while self._clock() - start < self._wait_s:
            await asyncio.sleep(self._poll_s)
            if self._live(candidates):
                return
        raise self._starting(asleep)

    def _wake(self, model_id: str) -> None:
        task = self._waking.get(model_id)
        if task is None or task.done():
            self._woken_at[model_id] = self._clock()
            self._waking[model_id] = asyncio.get_running_loop().create_task(self._call(model_id))

    async def _call(self, model_id: str) -> None:
        """One wake call through Serve, then wait for the replica in this router's table."""
        started = self._woken_at[model_id]
        logger.info("waking on-demand model %s (no replica)", model_id)
        try:
            await asyncio.wait_for(self._send(model_id), timeout=self._wait_s)
            while self._table.replica_count(model_id) == 0 and self._clock() - started < self._wait_s:
                await asyncio.sleep(self._poll_s)
        except TimeoutError:
            logger.warning("on-demand model %s has no replica %g s after waking it", model_id,
                           self._wait_s)
            return
        except Exception as exc:  # Serve unreachable: the next request wakes it again
            logger.warning("waking on-demand model %s failed: %s", model_id, type(exc).__name__)
            return
        if self._table.replica_count(model_id) > 0:
            self.last_cold_start_s[model_id] = self._clock() - started
            logger.info("on-demand model %s has a replica %.1f s after waking it", model_id,
                        self.last_cold_start_s[model_id])

    async def _send(self, model_id: str) -> None:
        await self._handles[model_id].options(method_name="wake").remote()

    def _starting(self, asleep: Sequence[ModelRoute]) -> APIError:
        now = self._clock()
        left = [self.last_cold_start_s.get(m.id, self._wait_s) - (now - self._woken_at.get(m.id, now))
                for m in asleep]
        retry = max(1, math.ceil(min(left)))
        names = ", ".join(m.id for m in asleep)
        return APIError(
            503,
            f"Model {names} is starting (it had no replica running); no replica was ready within "
            f"{self._wait_s:g} s. Retry after {retry} s.",
            code="model_starting",
            headers={"Retry-After": str(retry)},
        )

    async def close(self) -> None:
        for task in self._waking.values():
            task.cancel()
