"""Which model replica gets a request, and which replicas are out of rotation.

The router forwards over plain HTTP to each model replica's own data-plane
port (see serving/llm_server.py), so it must know the replicas itself. It
learns them from the endpoint registry (refreshed in the background, never
on the request path) and picks among a model's replicas by the spec's
`router.replica_choice` (serving/router/replica_choice.py): by default the
replica that most likely holds the request's prefix in its KV cache
(rendezvous hashing of a prefix key, sticky until that replica is
saturated), else *power of two choices* on outstanding requests: two random
replicas, the less loaded wins. Both keep load even without a global view,
which matters because several router replicas route independently.

"Load" is this router's own in-flight count plus the replica's self-reported
in-flight count from its last heartbeat (which includes other routers'
requests), so a replica busy with another router's traffic is avoided too.

Passive health: a replica that refuses a connection, reports its engine
dead, or does not answer in time is *ejected* at once by the request that
noticed, without waiting for Ray's own health check (10 s and more) or the
registry's expiry. An ejected replica receives no requests for
`router.replica_eject_s` (doubling with each consecutive ejection, as in
Envoy's outlier detection, so a replica whose health check passes but whose
engine hangs is not readmitted every second), and then only once a probe of
its `/health` answers 200 (`Dispatcher.probe_once`, every
`router.replica_probe_interval_s`). Probes also run on replicas in rotation,
so a replica that died silently leaves it within a probe interval even when
no request touches it. A probe that merely timed out while this router's
streams on the replica are still receiving tokens does not eject it (slow,
not hung: `Dispatcher._slow_but_streaming`).

An ejection also cuts short every request of this router still waiting on
the replica (their deadlines fire at once: one that has not answered yet is
retried elsewhere, a stream gets an error event), and it is reported to the
endpoint registry, whose next snapshot tells the other router replicas to
eject it too, so a replica that hangs costs each router at most one wait.

Vendor-hosted endpoints (serving/vendor/) are *static* entries of the same
table: one per vendor model, never from the registry. Their ejection is a
circuit breaker: a failure opens it for the endpoint's `open_s` (doubling in a
row), after which a probe of the vendor's health URL (half-open) closes it; a
healthy vendor is probed only every `probe_interval_s`, so probes do not eat
into its contractual rate. Vendor ejections are this router's own (each router
finds a failed vendor by its first failure or probe).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serving.router.replica_choice import ReplicaChoice, by_affinity, least_loaded, replica_seed

if TYPE_CHECKING:
    from serving.vendor.link import VendorLink

_MAX_EJECT_FACTOR = 12

logger = logging.getLogger("govllm.router")


@dataclass
class Endpoint:
    url: str
    replica_id: str
    model_id: str = ""
    reported_ongoing: int = 0
    inflight: int = 0
    ejected: bool = False
    ejected_until: float = 0.0
    ejections: int = 0  # in a row; reset by a request that succeeds
    reason: str = ""
    failed: bool = False  # ejected because its engine failed (not merely slow or silent)
    cuts: int = 0  # ejections so far: an attempt that sees this change was cut short by one
    waiting: set = field(default_factory=set, repr=False)  # deadlines of requests on this replica
    vendor: VendorLink | None = field(default=None, repr=False)  # a vendor endpoint, not a replica
    next_probe_at: float = 0.0  # vendors: when a closed circuit is probed next (monotonic)
    last_probe: str = ""  # what the last failed health probe saw (our words, never the answer's)
    last_data_at: float = float("-inf")  # when a stream of this router last received bytes (monotonic)
    seed: int = field(init=False, repr=False)  # rendezvous weight seed, from the replica id

    def __post_init__(self) -> None:
        self.seed = replica_seed(self.replica_id)

    @property
    def load(self) -> int:
        return self.inflight + self.reported_ongoing


@dataclass
class EndpointTable:
    """Live endpoints per model id, as last seen in the registry, with their ejection state."""

    by_model: dict[str, list[Endpoint]] = field(default_factory=dict)
    refreshed_at: float = 0.0
    routers: int = 1  # live router replicas (they share each model's admission capacity)
    rng: random.Random = field(default_factory=random.Random)
    eject_s: float = 5.0
    reports: list[tuple[str, float]] = field(default_factory=list)  # (replica id, hold) to share
    static: dict[str, list[Endpoint]] = field(default_factory=dict)  # vendor endpoints per model
    # ejections so far per (model, "self" | "peer"): found here, or reported by another router
    ejection_counts: Counter = field(default_factory=Counter)
    choice: ReplicaChoice = "least_loaded"  # router.replica_choice (set by RouterApp)
    balance_factor: float = 1.5  # router.prefix_affinity_balance_factor
    turns: Counter = field(default_factory=Counter)  # round robin: picks so far per model
    # prefix_affinity: picks so far per (model, replica_choice.OUTCOMES) (the metrics sampler)
    choices: Counter = field(default_factory=Counter)

    def add_vendor(self, link: VendorLink) -> Endpoint:
        """A vendor endpoint: a fixed entry that registry snapshots never replace."""
        ep = Endpoint(url=link.display_url, replica_id=f"vendor:{link.model_id}",
                      model_id=link.model_id, vendor=link)
        self.static.setdefault(link.model_id, []).append(ep)
        self.by_model.setdefault(link.model_id, []).append(ep)
        if link.problem:  # misconfigured: out of rotation until the router restarts with it fixed
            self.eject(ep, link.problem, failed=True, hold_s=math.inf, report=False)
        return ep

    def update(self, snapshot: dict[str, list[dict]], now: float | None = None, *,
               routers: int | None = None) -> None:
        """Replace the endpoint set, keeping in-flight counts and ejections of known replicas."""
        known = {ep.replica_id: ep for eps in self.by_model.values() for ep in eps}
        fresh: dict[str, list[Endpoint]] = {}
        for model_id, entries in snapshot.items():
            eps = []
            for entry in entries:
                ep = known.get(entry["replica_id"])
                if ep is None or ep.url != entry["url"]:
                    ep = Endpoint(url=entry["url"], replica_id=entry["replica_id"], model_id=model_id)
                ep.reported_ongoing = int(entry.get("ongoing", 0))
                held = float(entry.get("ejected_s") or 0)
                if held > 0 and not ep.ejected:  # another router found it failing
                    self.eject(ep, "ejected by another router", hold_s=held, report=False)
                eps.append(ep)
            fresh[model_id] = eps
        for model_id, eps in self.static.items():
            fresh.setdefault(model_id, []).extend(eps)
        self.by_model = fresh
        if routers is not None:
            self.routers = max(1, routers)
        self.refreshed_at = time.monotonic() if now is None else now

    def pick(self, model_id: str, *, exclude: frozenset[str] | set[str] = frozenset(),
             key: int | None = None, slots: int | None = None) -> Endpoint | None:
        """A replica in rotation for the request, by `choice`; None when there is none.

        `key`: the request's prefix key (replica_choice.prefix_key), None when it has none;
        `slots`: requests one replica runs at once (the affinity replica's saturation bound).
        """
        eps = [ep for ep in self.by_model.get(model_id, ())
               if not ep.ejected and ep.replica_id not in exclude]
        if not eps:
            return None
        if self.choice == "prefix_affinity" and model_id not in self.static:  # vendors: one each
            if key is None:
                self.choices[model_id, "unkeyed"] += 1
            else:
                ep, outcome = by_affinity(eps, key, factor=self.balance_factor, slots=slots)
                self.choices[model_id, outcome] += 1
                return ep
        if len(eps) == 1:
            return eps[0]
        if self.choice == "round_robin":
            turn = self.turns[model_id]
            self.turns[model_id] = turn + 1
            return eps[turn % len(eps)]
        return least_loaded(eps, self.rng)

    def eject(self, ep: Endpoint, reason: str, *, failed: bool = False, hold_s: float | None = None,
              report: bool = True) -> None:
        """Take a replica out of rotation and cut short what waits on it.

        `failed`: its engine failed (the requests cut short are told so), rather than being
        slow or silent. A health probe may readmit it once its ejection time is over.
        """
        if ep.ejected:
            return
        ep.ejections += 1
        base = ep.vendor.settings.open_s if ep.vendor is not None else self.eject_s
        hold = hold_s if hold_s is not None else base * min(2 ** (ep.ejections - 1), _MAX_EJECT_FACTOR)
        ep.ejected, ep.ejected_until, ep.reason, ep.failed = True, time.monotonic() + hold, reason, failed
        ep.cuts += 1
        # the reasons are fixed phrases and status codes: nothing of a request is in them
        logger.warning("model %s replica %s out of rotation for %s: %s", ep.model_id, ep.replica_id,
                       "as long as it is misconfigured" if math.isinf(hold) else f"{hold:.1f} s", reason)
        self.ejection_counts[ep.model_id, "peer" if not report and ep.vendor is None else "self"] += 1
        if report and ep.vendor is None:
            self.reports.append((ep.replica_id, hold))
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # no event loop: nobody can be waiting
            return
        for deadline in list(ep.waiting):
            if not deadline.expired():  # the one that just fired may be what ejects
                deadline.reschedule(now)

    def take_reports(self) -> list[tuple[str, float]]:
        """Ejections to share with the other routers through the registry (then forgotten)."""
        reports, self.reports = self.reports, []
        return reports

    def may_readmit(self, ep: Endpoint, now: float | None = None) -> bool:
        return ep.ejected and (time.monotonic() if now is None else now) >= ep.ejected_until

    @staticmethod
    def due_for_probe(ep: Endpoint, now: float | None = None) -> bool:
        """Replicas: every round. Vendors: half-open once the circuit's time is over, and a
        closed circuit every `probe_interval_s`."""
        if ep.vendor is None:
            return True
        now = time.monotonic() if now is None else now
        if ep.ejected:
            return now >= ep.ejected_until
        return now >= ep.next_probe_at

    @staticmethod
    def state(ep: Endpoint) -> str:
        """closed (in rotation), open (ejected), or half-open (may be readmitted by the next probe)."""
        if not ep.ejected:
            return "closed"
        return "half-open" if time.monotonic() >= ep.ejected_until else "open"

    def readmit(self, ep: Endpoint) -> None:
        ep.ejected, ep.reason = False, ""
        logger.info("model %s replica %s back in rotation", ep.model_id, ep.replica_id)

    @staticmethod
    def succeeded(ep: Endpoint) -> None:
        """A request was answered: the replica's ejection history starts over."""
        ep.ejections = 0

    def replica_count(self, model_id: str) -> int:
        return sum(1 for ep in self.by_model.get(model_id, ()) if not ep.ejected)

    def endpoints(self) -> list[Endpoint]:
        return [ep for eps in self.by_model.values() for ep in eps]

    def retry_after_s(self, model_id: str) -> int:
        """When a model without a usable replica may have one again, at least 1 s.

        An ejected replica may return when its ejection time is over; replicas that are
        gone entirely are restarted by Ray, which takes longer: 5 s is a polite interval.
        """
        ejected = [ep.ejected_until for ep in self.by_model.get(model_id, ())
                   if ep.ejected and math.isfinite(ep.ejected_until)]
        if ejected:
            return max(1, math.ceil(min(ejected) - time.monotonic()))
        return 5
