"""The endpoint registry: where router replicas learn model replicas' data-plane URLs.

Model replicas heartbeat their URL and load every `HEARTBEAT_S`; entries that
miss `TTL_S` worth of heartbeats disappear, so a replica that died without
deregistering stops receiving traffic within seconds even if the router never
tried it. The registry holds soft state only: if its own replica restarts, the
next round of heartbeats rebuilds it, and routers keep their last snapshot
meanwhile.

Router replicas heartbeat too: each learns how many routers are live, and so
its share of every model's admission capacity (serving/router/admission/).
Each also reports how many requests wait in its admission queues per model;
a model replica's heartbeat answer is its share of that wait, which it reports
to Serve's autoscaler beside its own in-flight count (serving/autoscaling.py):
requests queued in the routers are demand the replicas cannot see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ray import serve

HEARTBEAT_S = 2.0
TTL_S = 10.0


@dataclass
class _Entry:
    model_id: str
    replica_id: str
    url: str
    ongoing: int
    seen_at: float


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=10_000,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=5,
)
class EndpointRegistry:
    def __init__(self, ttl_s: float = TTL_S):
        self._ttl_s = ttl_s
        self._entries: dict[str, _Entry] = {}
        self._routers: dict[str, float] = {}
        self._ejected: dict[str, float] = {}  # replica id -> until (monotonic), reported by routers
        self._queued: dict[str, dict[str, int]] = {}  # router id -> model id -> requests waiting

    async def heartbeat(self, model_id: str, replica_id: str, url: str, ongoing: int = 0) -> float:
        """Record a replica's URL and load; the answer is its share of the requests waiting for
        its model in the routers' queues (for its autoscaling metric)."""
        self._entries[replica_id] = _Entry(model_id, replica_id, url, ongoing, time.monotonic())
        waiting = sum(q.get(model_id, 0) for q in self._queued.values())
        if not waiting:
            return 0.0
        return waiting / sum(1 for e in self._entries.values() if e.model_id == model_id)

    async def deregister(self, replica_id: str) -> None:
        self._entries.pop(replica_id, None)

    async def router_view(self, router_id: str, ejected: list | None = None,
                          queued: dict[str, int] | None = None) -> dict:
        """A router's heartbeat: it reports the replicas it ejected and the requests waiting in
        its queues per model; the answer is the live endpoints (with every router's
        ejections) and how many routers share them."""
        now = time.monotonic()
        self._routers[router_id] = now
        self._queued[router_id] = dict(queued or {})
        for replica_id, hold_s in ejected or ():
            self._ejected[replica_id] = max(self._ejected.get(replica_id, 0.0), now + float(hold_s))
        for rid in [r for r, seen in self._routers.items() if now - seen > self._ttl_s]:
            del self._routers[rid]
            self._queued.pop(rid, None)
        return {"endpoints": await self.snapshot(), "routers": len(self._routers)}

    async def forget_router(self, router_id: str) -> None:
        self._routers.pop(router_id, None)
        self._queued.pop(router_id, None)

    async def snapshot(self) -> dict[str, list[dict]]:
        """Live endpoints per model id."""
        now = time.monotonic()
        for replica_id in [r for r, e in self._entries.items() if now - e.seen_at > self._ttl_s]:
            del self._entries[replica_id]
        for replica_id in [r for r, until in self._ejected.items() if until <= now]:
            del self._ejected[replica_id]
        out: dict[str, list[dict]] = {}
        for e in self._entries.values():
            entry = {"replica_id": e.replica_id, "url": e.url, "ongoing": e.ongoing}
            if e.replica_id in self._ejected:
                entry["ejected_s"] = round(self._ejected[e.replica_id] - now, 3)
            out.setdefault(e.model_id, []).append(entry)
        return out
