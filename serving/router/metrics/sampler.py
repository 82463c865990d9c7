"""The background half of the router's metrics: state that changes without a request.

Admission queues, replicas in rotation, ejections, failovers and shed requests are plain
counters in the router's own objects (admission/, endpoints.py, dispatch.py), bumped
where they happen at the cost of an integer add; this task turns them into metrics every
SAMPLE_S seconds, so the request path never records them itself. Budgets and
reservations live in the shared store and are read every STANDING_S seconds
(serving/router/metrics/budgets.py); that read doubles as the store's liveness probe, so
`govllm_quota_store_up` is current even when no budgeted tenant is sending. The audit
spool's backlog is read from disk on a worker thread (serving/router/metrics/spool_backlog.py).

Ray's metrics agent exports every 10 s (`RAY_metrics_report_interval_ms`), so sampling
faster would show nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from serving.config import TenantSettings
from serving.router.metrics.budgets import budgeted, read_standing
from serving.router.metrics.recorder import RouterMetrics
from serving.router.metrics.spool_backlog import scan
from serving.store import StoreKeyspace

logger = logging.getLogger("govllm.metrics")

SAMPLE_S = 5.0
STANDING_S = 15.0
#: The limits a tenant may have: the `limit` label of govllm_quota_rejections_total.
_LIMITS = ("requests_per_minute", "tokens_per_minute", "monthly_token_budget")


class MetricsSampler:
    def __init__(self, metrics: RouterMetrics, *, router: str, admission: Any, table: Any,
                 dispatcher: Any, ledger: Any = None, store: Any = None, keys: StoreKeyspace | None = None,
                 tenants: Sequence[TenantSettings] = (), audit: Any = None,
                 clock: Callable[[], float] = time.time):
        self._m = metrics
        self._router = router
        self._admission = admission
        self._table = table
        self._dispatcher = dispatcher
        self._ledger = ledger
        self._store = store
        self._keys = keys
        self._budgeted = budgeted(tenants)
        self._audit = audit
        self._clock = clock
        self._seen: Counter = Counter()  # the last value of each counter turned into a metric
        self._started = False
        self._limited = {t.id: [name for name in _LIMITS if getattr(t.limits, name)] for t in tenants
                         if t.limits.any}
        self._standing_at = 0.0

    async def run(self) -> None:
        """Background task: sample for the router's lifetime (errors are logged, never fatal)."""
        while True:
            try:
                await self.sample_once()
            except Exception as exc:  # keep sampling; one bad round loses one point
                logger.warning("metrics sampling failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(SAMPLE_S)

    async def sample_once(self) -> None:
        if not self._m.enabled:
            return
        if not self._started:
            self._started = True
            self._m.start_counters(list(self._admission.gates), self._limited)
        self._router_state()
        now = time.monotonic()
        if self._store is not None and self._keys is not None and now >= self._standing_at:
            self._standing_at = now + STANDING_S
            await self._standing()
        if self._ledger is not None:
            self._m.deferred_settlements(self._ledger.deferred)
        if self._audit is not None:
            await self._audit_state()

    def _delta(self, key: tuple, value: int) -> int:
        """How much a cumulative counter grew since the last round (a reset starts over)."""
        last = self._seen[key]
        self._seen[key] = value
        return value - last if value >= last else value

    def _router_state(self) -> None:
        for model_id, gate in self._admission.gates.items():
            self._m.router_model(self._router, model_id, inflight=gate.inflight,
                                 queued=len(gate.waiters), slots=gate.slots,
                                 ready=self._table.replica_count(model_id))
            self._m.shed(model_id, self._delta(("shed", model_id), gate.shed))
        for (model_id, source), count in list(self._table.ejection_counts.items()):
            self._m.ejections(model_id, source, self._delta(("eject", model_id, source), count))
        for model_id, count in list(self._dispatcher.failovers.items()):
            self._m.failovers(model_id, self._delta(("failover", model_id), count))
        for (model_id, choice), count in list(self._table.choices.items()):
            self._m.replica_choices(model_id, choice, self._delta(("choice", model_id, choice), count))

    async def _standing(self) -> None:
        started = time.perf_counter()
        try:
            standing = await asyncio.wait_for(
                read_standing(self._store, self._keys, self._budgeted, self._clock()), 5.0)
        except Exception as exc:
            logger.debug("budget standing not read: %s", type(exc).__name__)
            self._m.store_up(False)
            return
        self._m.store_command("standing", time.perf_counter() - started)
        self._m.store_up(True)
        for s in standing:
            self._m.budget(s.tenant, used=s.used, limit=s.limit, reservations=s.reservations,
                           reserved=s.reserved)

    async def _audit_state(self) -> None:
        spool = self._audit.spool
        backlog = await asyncio.to_thread(scan, Path(spool.dir).parent)
        self._m.audit_backlog(oldest_age_s=backlog.oldest_age_s, spool_bytes=backlog.spool_bytes)
        self._m.audit_progress(records=self._delta(("records",), spool.written),
                               segments=self._delta(("uploaded",), self._audit.uploader.uploaded))
