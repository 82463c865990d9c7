"""The waiting room of one saturated model: priority classes, fair between tenants by weight.

Which waiting request gets the next free slot:

* classes are served most important first (strict priority), except that each
  later class that has waiters is credited its `min_share` of every slot handed
  out and takes a slot whenever its credit reaches one. A backlogged class thus
  receives at least `min_share` of the slots even while a more important class
  saturates the model: slowed, never starved. Credit is not banked by an idle
  class (it resets when the class has no waiter), so a class that shows up late
  cannot claim a burst;
* within a class, tenants are served by self-clocked weighted fair queuing:
  each request is tagged on arrival with a virtual finish time
  `max(class virtual time, tenant's last finish) + 1 / weight`, the smallest
  tag goes first, and the class's virtual time moves to the tag just served.
  A tenant with weight 2 is served twice as often as one with weight 1 while
  both wait; a tenant arriving at a busy model starts at the current virtual
  time, so idle time earns no credit and a flood that queued earlier cannot
  keep a newcomer behind all of it. The cost of a request is one (slots are
  handed out per request; its length is unknown until it ends).

Plain data structure, no clock and no asyncio: the gate (gate.py) owns the
waiting coroutines and this queue only orders them, so the discipline is tested
exactly (tests/unit/test_fair_queue.py).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Waiter:
    """One queued request; `payload` is the gate's (the future the request waits on)."""

    tenant: str
    cls: int
    cost: float
    start: float
    finish: float
    seq: int
    payload: Any = None


@dataclass
class _Class:
    min_share: float
    credit: float = 0.0
    vtime: float = 0.0
    size: int = 0
    flows: dict[str, deque[Waiter]] = field(default_factory=dict)
    last_finish: dict[str, float] = field(default_factory=dict)  # bounded: tenants come from the spec


class FairQueue:
    """Per-class, per-tenant queues; `pop` returns the request that the discipline serves next."""

    def __init__(self, min_shares: Sequence[float]):
        self._classes = [_Class(share) for share in min_shares]
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def size(self, cls: int) -> int:
        """Requests waiting in class `cls`."""
        return self._classes[cls].size

    def ahead(self, cls: int) -> int:
        """Requests that would be served before a new one of class `cls` (its class and above)."""
        return sum(c.size for c in self._classes[: cls + 1])

    def queued(self, tenant: str, cls: int) -> int:
        flow = self._classes[cls].flows.get(tenant)
        return len(flow) if flow else 0

    def push(self, tenant: str, cls: int, weight: float, payload: Any = None) -> Waiter:
        """Queue a request of `tenant` in class `cls`, tagged for weighted fair queuing."""
        c = self._classes[cls]
        start = max(c.vtime, c.last_finish.get(tenant, c.vtime))
        cost = 1.0 / weight
        waiter = Waiter(tenant, cls, cost, start, start + cost, next(self._seq), payload)
        c.last_finish[tenant] = waiter.finish
        c.flows.setdefault(tenant, deque()).append(waiter)
        c.size += 1
        self._size += 1
        return waiter

    def remove(self, waiter: Waiter) -> bool:
        """Take a request out (it timed out, was cancelled or pushed out); False if not queued.

        The tenant's later requests move up by its cost, so a request that left unserved
        costs its tenant nothing.
        """
        c = self._classes[waiter.cls]
        flow = c.flows.get(waiter.tenant)
        if not flow or waiter not in flow:
            return False
        behind = False
        for other in flow:
            if other is waiter:
                behind = True
            elif behind:
                other.start -= waiter.cost
                other.finish -= waiter.cost
        flow.remove(waiter)
        c.last_finish[waiter.tenant] -= waiter.cost
        self._left(c, waiter.tenant)
        return True

    def pop(self) -> Waiter | None:
        """The next request to serve, or None when nobody waits."""
        waiting = [c for c in self._classes if c.size]
        if not waiting:
            return None
        chosen = waiting[0]
        for c in waiting[1:]:
            c.credit += c.min_share
        for c in waiting[1:]:
            if c.credit >= 1 - 1e-9:  # 20 x 0.05 is 0.9999...
                c.credit -= 1
                chosen = c
                break
        tenant, flow = min(chosen.flows.items(), key=lambda kv: (kv[1][0].finish, kv[1][0].seq))
        waiter = flow.popleft()
        chosen.vtime = max(chosen.vtime, waiter.finish)
        self._left(chosen, tenant)
        return waiter

    def pop_where(self, eligible: Callable[[str], bool]) -> Waiter | None:
        """The next request among the tenants `eligible` accepts: most important class first, then
        the smallest tag. For the gate's headroom slots; class credits are left as they are."""
        for c in self._classes:
            flows = [(t, f) for t, f in c.flows.items() if eligible(t)]
            if flows:
                tenant, flow = min(flows, key=lambda kv: (kv[1][0].finish, kv[1][0].seq))
                waiter = flow.popleft()
                c.vtime = max(c.vtime, waiter.finish)
                self._left(c, tenant)
                return waiter
        return None

    def heaviest(self, cls: int, weights: dict[str, float]) -> tuple[str, float] | None:
        """(tenant, its queued requests / weight) of the class's longest weighted queue."""
        flows = self._classes[cls].flows
        if not flows:
            return None
        tenant = max(flows, key=lambda t: (len(flows[t]) / weights.get(t, 1.0), t))
        return tenant, len(flows[tenant]) / weights.get(tenant, 1.0)

    def newest(self, tenant: str, cls: int) -> Waiter:
        """The tenant's most recently queued request in the class (what a push-out removes)."""
        return self._classes[cls].flows[tenant][-1]

    def _left(self, c: _Class, tenant: str) -> None:
        if not c.flows[tenant]:
            del c.flows[tenant]
        c.size -= 1
        self._size -= 1
        if not c.size:
            c.credit = 0.0
