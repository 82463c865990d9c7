"""Admission control: a bounded number of requests in flight per model, a bounded queue, shedding.

Without a bound, a flood queues inside the engine and every request's first
token waits behind it. Each router replica therefore admits at most its
share of a model's capacity:

    slots = ceil(max_ongoing_per_replica x live replicas / live routers)
    queue = ceil(max_queued_per_replica  x live replicas / live routers)

(`max_ongoing_per_replica` is the planner's max_num_seqs on GPUs). A request
that finds every slot taken waits in a FIFO queue for at most
`router.max_queue_wait_s`; when the queue is full too it is shed at once
with 503 `model_overloaded`, and a tenant that already holds
`router.tenant_max_share` of the model's slots and queue is refused with 429
`tenant_share_exceeded` instead of queueing, so one tenant's flood cannot
starve the others. Retry-After is computed from the queue: the queued work
divided by the slots, at the model's recent mean service time.

For an alias, the first candidate with a free slot serves; only when every
candidate is full does the request queue (on the first one with room), so a
saturated model spills over to the next model of its alias group.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from serving.config import ModelRoute, RouterSettings
from serving.request import APIError
from serving.router.endpoints import EndpointTable

_EWMA_WEIGHT = 0.2
_MAX_RETRY_AFTER_S = 60


@dataclass
class _Waiter:
    tenant: str
    future: asyncio.Future


class Slot:
    """One admitted request on one model; `release()` is idempotent."""

    __slots__ = ("gate", "tenant", "started", "released")

    def __init__(self, gate: ModelGate, tenant: str):
        self.gate, self.tenant, self.started, self.released = gate, tenant, time.monotonic(), False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate._release(self)


class ModelGate:
    """Slots and queue of one model in this router replica."""

    def __init__(self, route: ModelRoute, settings: RouterSettings):
        self.route = route
        self._settings = settings
        self.inflight = 0
        self.slots = 0
        self.queue_limit = 0
        self.waiters: deque[_Waiter] = deque()
        self.by_tenant: Counter[str] = Counter()
        self.service_s = 1.0  # recent mean time a request holds a slot
        self.shed = 0

    def resize(self, replicas: int, routers: int) -> None:
        routers = max(1, routers)
        self.slots = math.ceil(self.route.max_ongoing_per_replica * replicas / routers)
        self.queue_limit = math.ceil(self.route.max_queued_per_replica * replicas / routers)
        self._wake()

    def free(self) -> bool:
        return self.inflight < self.slots and not self.waiters

    def retry_after_s(self) -> int:
        queued_work = (len(self.waiters) + 1) * self.service_s
        return max(1, min(_MAX_RETRY_AFTER_S, math.ceil(queued_work / max(self.slots, 1))))

    def over_share(self, tenant: str) -> bool:
        share = math.ceil((self.slots + self.queue_limit) * self._settings.tenant_max_share)
        return self.by_tenant[tenant] >= max(1, share)

    def take(self, tenant: str) -> Slot:
        self.inflight += 1
        self.by_tenant[tenant] += 1
        return Slot(self, tenant)

    async def wait(self, tenant: str) -> Slot:
        """Queue for a slot; 503 after `max_queue_wait_s`."""
        waiter = _Waiter(tenant, asyncio.get_running_loop().create_future())
        self.waiters.append(waiter)
        self.by_tenant[tenant] += 1
        try:
            async with asyncio.timeout(self._settings.max_queue_wait_s):
                await waiter.future
        except BaseException:
            future = waiter.future
            if future.done() and not future.cancelled():
                future.result().release()  # a slot arrived just as we gave up: hand it on
            else:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
                self._forget(tenant)
            raise
        return waiter.future.result()

    def _wake(self) -> None:
        while self.waiters and self.inflight < self.slots:
            waiter = self.waiters.popleft()
            if waiter.future.done():
                continue
            self.inflight += 1  # the waiter's tenant count moves from queued to in flight
            waiter.future.set_result(Slot(self, waiter.tenant))

    def _release(self, slot: Slot) -> None:
        self.inflight -= 1
        self._forget(slot.tenant)
        held = time.monotonic() - slot.started
        self.service_s += _EWMA_WEIGHT * (held - self.service_s)
        self._wake()

    def _forget(self, tenant: str) -> None:
        self.by_tenant[tenant] -= 1
        if self.by_tenant[tenant] <= 0:
            del self.by_tenant[tenant]


class Admission:
    """The gates of every model, sized from the endpoint table."""

    def __init__(self, models: Sequence[ModelRoute], settings: RouterSettings, table: EndpointTable):
        self._table = table
        self._settings = settings
        self.gates = {m.id: ModelGate(m, settings) for m in models}

    def resize(self) -> None:
        """Recompute every model's slots from live replicas and routers (after each registry refresh)."""
        for model_id, gate in self.gates.items():
            gate.resize(self._table.replica_count(model_id), self._table.routers)

    async def admit(self, candidates: Sequence[ModelRoute], tenant: str,
                    exclude: set[str]) -> tuple[ModelRoute, Slot]:
        """A model of `candidates` (in fallback order) and a slot on it, or the refusal."""
        self.resize()
        live = [m for m in candidates if m.id not in exclude and self._table.replica_count(m.id) > 0]
        if not live:
            raise self._unavailable(candidates, exclude)
        for model in live:
            gate = self.gates[model.id]
            if gate.free():
                return model, gate.take(tenant)
        for model in live:
            gate = self.gates[model.id]
            if len(gate.waiters) < gate.queue_limit:
                if gate.over_share(tenant):
                    gate.shed += 1
                    raise APIError(
                        429,
                        f"Model '{model.id}' is at capacity and your tenant already holds its "
                        f"share of it ({gate.by_tenant[tenant]} requests in flight or queued); "
                        f"retry after {gate.retry_after_s()} s.",
                        code="tenant_share_exceeded",
                        headers={"Retry-After": str(gate.retry_after_s())},
                    )
                try:
                    return model, await gate.wait(tenant)
                except TimeoutError:
                    gate.shed += 1
                    raise self._overloaded(model, gate, waited=True) from None
        gate = self.gates[live[0].id]
        gate.shed += 1
        raise self._overloaded(live[0], gate, waited=False)

    def _overloaded(self, model: ModelRoute, gate: ModelGate, *, waited: bool) -> APIError:
        retry = gate.retry_after_s()
        why = (f"waited {self._settings.max_queue_wait_s:g} s without a free slot" if waited
               else f"{gate.inflight} requests in flight and {len(gate.waiters)} queued")
        return APIError(
            503,
            f"Model '{model.id}' is at capacity ({why}); retry after {retry} s.",
            code="model_overloaded",
            headers={"Retry-After": str(retry)},
        )

    def _unavailable(self, candidates: Sequence[ModelRoute], exclude: set[str]) -> APIError:
        names = ", ".join(m.id for m in candidates)
        retry = min(self._table.retry_after_s(m.id) for m in candidates)
        why = [f"the vendor endpoint of {m.id} is out of rotation ({eps[0].reason})"
               for m in candidates if (eps := self._table.static.get(m.id)) and eps[0].ejected]
        detail = f" ({'; '.join(why)})" if why else ""
        return APIError(
            503,
            f"No replica of model {names} is ready to take requests right now{detail}; "
            f"retry after {retry} s.",
            code="model_unavailable",
            headers={"Retry-After": str(retry)},
        )
