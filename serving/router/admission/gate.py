"""Admission gates: slots, the fair waiting room and refusals of each model in one router replica.

Without a bound, a flood queues inside the engine and every request's first
token waits behind it. Each router replica therefore admits at most its
share of a model's capacity:

    slots = ceil(max_ongoing_per_replica x live replicas / live routers)
    queue = ceil(max_queued_per_replica  x live replicas / live routers)   per priority class

(`max_ongoing_per_replica` is the planner's max_num_seqs on GPUs). A request
that finds every slot taken waits for at most `router.max_queue_wait_s` in its
priority class's queue; a freed slot goes to the request the fair queue
(fair_queue.py) picks: most important class first, weighted fair between
tenants, lower classes guaranteed their `min_share`.

Headroom: while two or more tenants use a model (asked for it within
`router.fair_active_s`), the last `router.fair_headroom` of its slots (at least one,
when it has two or more) are kept for tenants holding less than their weighted
share of the slots. A flood then queues one slot short of the full model, and a
quiet tenant's request starts at once in the kept slot instead of waiting for one
of the flood's to end (a slot is held for a whole generation: non-preemptive, so
without headroom the quiet tenant's first token waits for the next release). One
tenant alone gets every slot: the headroom costs throughput only while others are
about. Refusals:

* 429 `tenant_share_exceeded`: the tenant already holds `router.tenant_max_share`
  of the model's slots and queue, or its newest queued request was pushed out
  of a full class queue by a tenant with a shorter weighted queue (the flood
  gives way, the quiet tenant queues);
* 503 `model_overloaded`: the class queue is full and the caller's own queue is
  the longest, or the wait ran out.

Retry-After is computed from the queue: the requests ahead of the caller's class
(its class and the more important ones) divided by the slots, at the model's
recent mean service time.

For an alias, the first candidate with a free slot serves; only when every
candidate is full does the request queue (on the first one with room), so a
saturated model spills over to the next model of its alias group.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence

from serving.config import ModelRoute, RouterSettings, TenantSettings
from serving.request import APIError
from serving.router.admission.fair_queue import FairQueue, Waiter
from serving.router.endpoints import EndpointTable

_EWMA_WEIGHT = 0.2
_MAX_RETRY_AFTER_S = 60


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
    """Slots and fair queue of one model in this router replica."""

    def __init__(self, route: ModelRoute, settings: RouterSettings, weights: dict[str, float] | None = None):
        self.route = route
        self._settings = settings
        self._weights = weights if weights is not None else {}
        self.classes = tuple(c.name for c in settings.priority_classes)
        self.inflight = 0
        self.slots = 0
        self.queue_limit = 0  # per priority class
        self.waiters = FairQueue([c.min_share for c in settings.priority_classes])
        self.by_tenant: Counter[str] = Counter()  # in flight + queued, per tenant
        self.running: Counter[str] = Counter()  # in flight, per tenant
        self._seen: dict[str, float] = {}  # tenant -> when it last asked for this model
        self.service_s = 1.0  # recent mean time a request holds a slot
        self.shed = 0

    def resize(self, replicas: int, routers: int) -> None:
        routers = max(1, routers)
        self.slots = math.ceil(self.route.max_ongoing_per_replica * replicas / routers)
        self.queue_limit = math.ceil(self.route.max_queued_per_replica * replicas / routers)
        # forget tenants that stopped using the model: free() and _below_share() walk what is
        # left on the request path, which stays the few tenants active now, not every tenant seen
        horizon = time.monotonic() - self._settings.fair_active_s
        self._seen = {t: at for t, at in self._seen.items() if at >= horizon}
        self._wake()

    def free(self, tenant: str) -> bool:
        """Whether `tenant` may take a slot now without queueing (and note that it asked)."""
        now = time.monotonic()
        self._seen[tenant] = now
        if self.inflight >= self.slots:
            return False
        reserve = self.reserve(now)
        if self.waiters:  # queue, and get a kept slot from the fair queue if entitled (_wake)
            return False
        if self.inflight < self.slots - reserve:
            return True
        return reserve > 0 and self._below_share(tenant, now)

    def reserve(self, now: float | None = None) -> int:
        """Slots kept for tenants below their weighted share: none while one tenant uses the model."""
        headroom = self._settings.fair_headroom
        if self.slots < 2 or headroom <= 0:
            return 0
        horizon = (time.monotonic() if now is None else now) - self._settings.fair_active_s
        if sum(1 for at in self._seen.values() if at >= horizon) < 2:
            return 0
        return max(1, math.floor(self.slots * headroom))

    def _below_share(self, tenant: str, now: float) -> bool:
        """Whether `tenant` holds fewer slots than its weight's share among the tenants using the model."""
        horizon = now - self._settings.fair_active_s
        total = sum(self._weights.get(t, 1.0) for t, at in self._seen.items() if at >= horizon)
        share = self.slots * self._weights.get(tenant, 1.0) / max(total, 1e-9)
        return self.running[tenant] < share

    def retry_after_s(self, cls: int = 0) -> int:
        """Seconds until a request of class `cls` would likely get a slot: the queue ahead of it."""
        queued_work = (self.waiters.ahead(cls) + 1) * self.service_s
        return max(1, min(_MAX_RETRY_AFTER_S, math.ceil(queued_work / max(self.slots, 1))))

    def over_share(self, tenant: str) -> bool:
        share = math.ceil((self.slots + self.queue_limit) * self._settings.tenant_max_share)
        return self.by_tenant[tenant] >= max(1, share)

    def room(self, tenant: str, cls: int) -> bool:
        """Whether a request may queue in class `cls`: there is room, or a longer queue gives way."""
        return self.waiters.size(cls) < self.queue_limit or self._victim(tenant, cls) is not None

    def take(self, tenant: str) -> Slot:
        self.inflight += 1
        self.by_tenant[tenant] += 1
        self.running[tenant] += 1
        return Slot(self, tenant)

    async def wait(self, tenant: str, cls: int = 0) -> Slot:
        """Queue for a slot in class `cls`; TimeoutError after `max_queue_wait_s`, APIError (429)
        when pushed out by a tenant with a shorter queue."""
        if self.waiters.size(cls) >= self.queue_limit:
            self._push_out(tenant, cls)
        weight = self._weights.get(tenant, 1.0)
        waiter = self.waiters.push(tenant, cls, weight, asyncio.get_running_loop().create_future())
        self.by_tenant[tenant] += 1
        future: asyncio.Future = waiter.payload
        if self.inflight < self.slots:  # a kept slot is free: the fair queue says whose it is
            self._wake()
        try:
            async with asyncio.timeout(self._settings.max_queue_wait_s):
                await future
        except BaseException:
            if future.done() and not future.cancelled():
                if future.exception() is None:
                    future.result().release()  # a slot arrived just as we gave up: hand it on
                # else: pushed out, and _push_out already took it off the books
            else:
                self.waiters.remove(waiter)
                self._forget(tenant)
            raise
        return future.result()

    def _victim(self, tenant: str, cls: int) -> str | None:
        """The tenant whose newest request gives way to `tenant`'s: the longest weighted queue of
        the class, if longer than the caller's would be with this request."""
        heaviest = self.waiters.heaviest(cls, self._weights)
        if heaviest is None:
            return None
        other, load = heaviest
        mine = (self.waiters.queued(tenant, cls) + 1) / self._weights.get(tenant, 1.0)
        return other if other != tenant and load > mine else None

    def _push_out(self, tenant: str, cls: int) -> None:
        victim = self._victim(tenant, cls)
        if victim is None:
            raise RuntimeError("no room in the class queue")  # callers check room() first
        waiter: Waiter = self.waiters.newest(victim, cls)
        self.waiters.remove(waiter)
        self._forget(victim)
        self.shed += 1
        retry = self.retry_after_s(cls)
        waiter.payload.set_exception(APIError(
            429,
            f"Model '{self.route.id}' is at capacity and your tenant has the longest queue for it "
            f"in priority class '{self.classes[cls]}'; your newest request gave way to another "
            f"tenant's; retry after {retry} s.",
            code="tenant_share_exceeded",
            headers={"Retry-After": str(retry)},
        ))

    def _wake(self) -> None:
        """Hand freed slots to the fair queue; the headroom only to tenants below their share (it
        opens to everyone within a registry refresh, which resizes, once one tenant is left)."""
        now = time.monotonic()
        reserve = self.reserve(now) if self.waiters else 0
        while self.waiters and self.inflight < self.slots:
            if self.inflight < self.slots - reserve:
                waiter = self.waiters.pop()
            else:  # only the headroom is left: for a waiting tenant below its share, if any
                waiter = self.waiters.pop_where(lambda t: self._below_share(t, now))
                if waiter is None:
                    break
            if waiter.payload.done():
                continue
            self.inflight += 1  # the waiter's tenant count moves from queued to in flight
            self.running[waiter.tenant] += 1
            waiter.payload.set_result(Slot(self, waiter.tenant))

    def _release(self, slot: Slot) -> None:
        self.inflight -= 1
        self.running[slot.tenant] -= 1
        if self.running[slot.tenant] <= 0:
            del self.running[slot.tenant]
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

    def __init__(self, models: Sequence[ModelRoute], settings: RouterSettings, table: EndpointTable,
                 tenants: Sequence[TenantSettings] = ()):
        self._table = table
        self._settings = settings
        self._class_index = {c.name: i for i, c in enumerate(settings.priority_classes)}
        self._tenant_class = {t.id: self._class_index[settings.priority_class_of(t)] for t in tenants}
        weights = {t.id: t.weight for t in tenants}
        self.gates = {m.id: ModelGate(m, settings, weights) for m in models}

    def resize(self) -> None:
        """Recompute every model's slots from live replicas and routers (after each registry refresh)."""
        for model_id, gate in self.gates.items():
            gate.resize(self._table.replica_count(model_id), self._table.routers)

    def class_index(self, tenant: str, priority: str | None) -> int:
        """The class a request queues in: `priority` when given (already resolved by the request
        path, serving/router/admission/priority.py), else its tenant's, else the first class."""
        if priority is not None and priority in self._class_index:
            return self._class_index[priority]
        return self._tenant_class.get(tenant, 0)

    async def admit(self, candidates: Sequence[ModelRoute], tenant: str, exclude: set[str],
                    priority: str | None = None) -> tuple[ModelRoute, Slot]:
        """A model of `candidates` (in fallback order) and a slot on it, or the refusal."""
        self.resize()
        live = [m for m in candidates if m.id not in exclude and self._table.replica_count(m.id) > 0]
        if not live:
            raise self._unavailable(candidates, exclude)
        for model in live:
            gate = self.gates[model.id]
            if gate.free(tenant):
                return model, gate.take(tenant)
        cls = self.class_index(tenant, priority)
        for model in live:
            gate = self.gates[model.id]
            if gate.room(tenant, cls):
                if gate.over_share(tenant):
                    gate.shed += 1
                    retry = gate.retry_after_s(cls)
                    raise APIError(
                        429,
                        f"Model '{model.id}' is at capacity and your tenant already holds its "
                        f"share of it ({gate.by_tenant[tenant]} requests in flight or queued); "
                        f"retry after {retry} s.",
                        code="tenant_share_exceeded",
                        headers={"Retry-After": str(retry)},
                    )
                try:
                    return model, await gate.wait(tenant, cls)
                except TimeoutError:
                    gate.shed += 1
                    raise self._overloaded(model, gate, cls, waited=True) from None
        gate = self.gates[live[0].id]
        gate.shed += 1
        raise self._overloaded(live[0], gate, cls, waited=False)

    def _overloaded(self, model: ModelRoute, gate: ModelGate, cls: int, *, waited: bool) -> APIError:
        retry = gate.retry_after_s(cls)
        why = (f"waited {self._settings.max_queue_wait_s:g} s without a free slot" if waited
               else f"{gate.inflight} requests in flight and {gate.waiters.size(cls)} queued in "
                    f"priority class '{gate.classes[cls]}'")
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
