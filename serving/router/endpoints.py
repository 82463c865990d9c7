"""Which model replica gets a request.

The router forwards over plain HTTP to each model replica's own data-plane
port (see serving/llm_server.py), so it must know the replicas itself. It
learns them from the endpoint registry (refreshed in the background, never
on the request path) and picks among a model's replicas by *power of two
choices* on outstanding requests: two random replicas, the less loaded
wins. That keeps load even without a global view, which matters because
several router replicas route independently.

"Load" is this router's own in-flight count plus the replica's self-reported
in-flight count from its last heartbeat (which includes other routers'
requests), so a replica busy with another router's traffic is avoided too.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Endpoint:
    url: str
    replica_id: str
    reported_ongoing: int = 0
    inflight: int = 0
    down_until: float = 0.0

    @property
    def load(self) -> int:
        return self.inflight + self.reported_ongoing

    def usable(self, now: float) -> bool:
        return now >= self.down_until


@dataclass
class EndpointTable:
    """Live endpoints per model id, as last seen in the registry."""

    by_model: dict[str, list[Endpoint]] = field(default_factory=dict)
    refreshed_at: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def update(self, snapshot: dict[str, list[dict]], now: float | None = None) -> None:
        """Replace the endpoint set, keeping in-flight counts and down marks of known replicas."""
        known = {ep.replica_id: ep for eps in self.by_model.values() for ep in eps}
        fresh: dict[str, list[Endpoint]] = {}
        for model_id, entries in snapshot.items():
            eps = []
            for entry in entries:
                ep = known.get(entry["replica_id"])
                if ep is None or ep.url != entry["url"]:
                    ep = Endpoint(url=entry["url"], replica_id=entry["replica_id"])
                ep.reported_ongoing = int(entry.get("ongoing", 0))
                eps.append(ep)
            fresh[model_id] = eps
        self.by_model = fresh
        self.refreshed_at = time.monotonic() if now is None else now

    def pick(self, model_id: str, *, exclude: frozenset[str] = frozenset()) -> Endpoint | None:
        now = time.monotonic()
        eps = [
            ep
            for ep in self.by_model.get(model_id, ())
            if ep.usable(now) and ep.replica_id not in exclude
        ]
        if not eps:
            return None
        if len(eps) == 1:
            return eps[0]
        a, b = self.rng.sample(eps, 2)
        return a if a.load <= b.load else b

    def mark_down(self, ep: Endpoint, seconds: float = 5.0) -> None:
        """Skip a replica that refused a connection until the registry has caught up."""
        ep.down_until = time.monotonic() + seconds

    def replica_count(self, model_id: str) -> int:
        now = time.monotonic()
        return sum(1 for ep in self.by_model.get(model_id, ()) if ep.usable(now))
