"""The router's metrics, exported through Ray's metrics agent (each node's metrics port).

Ray's agent serves every worker's metrics on the node's metrics port (8080 in the chart),
with `ray_` in front of each name, so one scrape target per node carries every router
replica of that node; Prometheus needs no per-replica discovery (docs/observability.md).

Cost on the request path: one record per request, at its end, in a finisher (after the
last bytes went out): a request counter, tokens, cost, and the latency histograms. Never
per streamed chunk: recording a Ray metric is a few microseconds of Python, which per
chunk would show in the benchmarks (`python -m loadtest.bench_metrics`, docs/benchmarks.md).
What changes without a request (admission queues, replicas, budgets, the audit spool) is
sampled in the background (serving/router/metrics/sampler.py).

Label values come from closed sets only (serving/router/metrics/labels.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from serving.router.metrics.labels import code_label, model_label, status_label, tenant_label

logger = logging.getLogger("govllm.metrics")

#: Histogram boundaries (seconds). An SLO threshold used by the chart's alerts must be one of
#: them (helm/govllm/values.yaml metrics.prometheusRule.slo).
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STORE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Streams whose first chunk comes with the first token (vLLM sends a chat stream's role chunk
#: with it). A Responses stream opens with response.created before generation starts, so its
#: first byte says nothing about the first token: no TTFT or TPOT from it.
_TOKEN_STREAMS = frozenset({"chat", "completions"})


class RouterMetrics:
    """Every metric a router replica exports; no-ops without a Ray runtime (unit tests, CLI)."""

    def __init__(self) -> None:
        try:
            from ray.util import metrics
        except Exception as exc:  # pragma: no cover - Ray is a dependency
            logger.debug("router metrics disabled: %s", exc)
            self.enabled = False
            return
        try:
            self._define(metrics)
            self.enabled = True
        except Exception as exc:  # no Ray runtime (unit tests, CLI): metrics are no-ops
            logger.debug("router metrics disabled: %s", exc)
            self.enabled = False

    def _define(self, m: Any) -> None:
        tenant_model = ("tenant", "model")
        # -- per request (finished) --------------------------------------------------------------
        self._requests = m.Counter(
            "govllm_requests_total",
            description="Requests answered, per tenant, model, operation, HTTP status and error code "
            "(code empty on success).",
            tag_keys=("tenant", "model", "operation", "status", "code"))
        self._tokens = m.Counter(
            "govllm_tokens_total",
            description="Tokens billed, per tenant, model and kind (prompt, completion).",
            tag_keys=("tenant", "model", "kind"))
        self._cost = m.Counter(
            "govllm_cost_yen_total",
            description="Cost in yen from the model's declared price, per tenant and model "
            "(per month: the increase over the month).",
            tag_keys=tenant_model)
        self._ttft = m.Histogram(
            "govllm_ttft_seconds",
            description="Streamed chat and completions answers: from the request's arrival at the "
            "router to its first answer bytes (the first token) leaving it.",
            boundaries=list(TTFT_BUCKETS), tag_keys=tenant_model)
        self._tpot = m.Histogram(
            "govllm_tpot_seconds",
            description="Streamed answers of 2 tokens or more: time per output token after the "
            "first (E2E minus TTFT over completion tokens minus one).",
            boundaries=list(TPOT_BUCKETS), tag_keys=tenant_model)
        self._e2e = m.Histogram(
            "govllm_e2e_seconds",
            description="Answered requests (200): from arrival at the router to the last byte sent.",
            boundaries=list(E2E_BUCKETS), tag_keys=tenant_model)
        # -- tenancy -----------------------------------------------------------------------------
        self._quota = m.Counter(
            "govllm_quota_rejections_total",
            description="Requests refused by a tenant limit (requests_per_minute, "
            "tokens_per_minute, monthly_token_budget).",
            tag_keys=("tenant", "limit"))
        self._budget_ratio = m.Gauge(
            "govllm_budget_used_ratio",
            description="Tokens settled this month (Asia/Tokyo) over the tenant's monthly budget.",
            tag_keys=("tenant",))
        self._budget_used = m.Gauge(
            "govllm_budget_used_tokens", description="Tokens settled this month.", tag_keys=("tenant",))
        self._budget_limit = m.Gauge(
            "govllm_budget_limit_tokens", description="The tenant's monthly token budget.",
            tag_keys=("tenant",))
        self._reservations = m.Gauge(
            "govllm_reservations_outstanding",
            description="Budget reservations of requests in flight (not yet settled or expired).",
            tag_keys=("tenant",))
        self._reserved_tokens = m.Gauge(
            "govllm_reserved_tokens",
            description="Tokens held by outstanding budget reservations.", tag_keys=("tenant",))
        self._deferred = m.Gauge(
            "govllm_quota_deferred_settlements",
            description="Settlements this router keeps in memory until the store takes them.")
        self._feedback = m.Counter(
            "govllm_feedback_total", description="User ratings of answers, per model.",
            tag_keys=("model", "rating"))
        self._pii_found = m.Counter(
            "govllm_pii_findings_total",
            description="Personal information found, per tenant and type, in prompts or answers "
            "(counts only, never values).",
            tag_keys=("tenant", "type", "where"))
        self._pii_decisions = m.Counter(
            "govllm_pii_decisions_total",
            description="Requests with personal information, per tenant and decision.",
            tag_keys=("tenant", "decision"))
        # -- the shared store --------------------------------------------------------------------
        self._store_up = m.Gauge(
            "govllm_quota_store_up", description="1 when the shared store answers, else 0.")
        self._store_seconds = m.Histogram(
            "govllm_store_command_seconds",
            description="Shared store round trips: admit and settle (quota scripts), standing "
            "(the background read of budgets).",
            boundaries=list(STORE_BUCKETS), tag_keys=("command",))
        # -- this router replica (sampled) -------------------------------------------------------
        per_router = ("router", "model")
        self._inflight = m.Gauge(
            "govllm_router_inflight", description="Requests admitted to a model by this router.",
            tag_keys=per_router)
        self._queued = m.Gauge(
            "govllm_router_queue_depth",
            description="Requests waiting in this router's admission queue for a model.",
            tag_keys=per_router)
        self._slots = m.Gauge(
            "govllm_router_slots",
            description="This router's share of a model's capacity (admission slots).",
            tag_keys=per_router)
        self._ready = m.Gauge(
            "govllm_router_ready_replicas",
            description="Replicas (or vendor endpoints) of a model in this router's rotation.",
            tag_keys=per_router)
        self._shed = m.Counter(
            "govllm_router_shed_total",
            description="Requests refused by admission control (queue full or waited too long: "
            "503 model_overloaded; tenant over its share: 429 tenant_share_exceeded).",
            tag_keys=("model",))
        self._ejections = m.Counter(
            "govllm_replica_ejections_total",
            description="Replicas taken out of rotation: found failing by this router (self) or "
            "reported by another (peer).",
            tag_keys=("model", "source"))
        self._choices = m.Counter(
            "govllm_replica_choices_total",
            description="Replica choices under router.replica_choice prefix_affinity: home (the "
            "prefix's own replica), spilled (the next in its order: the first was over its load "
            "bound), saturated (every replica over its bound: the least loaded), unkeyed (no "
            "prefix key: the least loaded).",
            tag_keys=("model", "choice"))
        self._failovers = m.Counter(
            "govllm_failovers_total",
            description="Attempts that failed before the first byte and moved to another replica "
            "or model.",
            tag_keys=("model",))
        # -- the audit trail ---------------------------------------------------------------------
        self._audit_pending = m.Gauge(
            "govllm_audit_pending_records",
            description="Audit records in sealed spool segments of this node not yet in the object "
            "store (every router of a node reports the node's spool: take max per node).")
        self._audit_oldest = m.Gauge(
            "govllm_audit_oldest_pending_age_seconds",
            description="Age of the oldest spool segment of this node not yet uploaded (0: none).")
        self._audit_bytes = m.Gauge(
            "govllm_audit_spool_bytes",
            description="Bytes of spool segments of this node not yet uploaded.")
        self._audit_records = m.Counter(
            "govllm_audit_records_total",
            description="Audit records this router made durable in its spool.")
        self._audit_uploaded = m.Counter(
            "govllm_audit_uploaded_segments_total",
            description="Spool segments this router uploaded to the object store.")
        self._audit_upload_failures = m.Counter(
            "govllm_audit_upload_failures_total", description="Failed audit upload rounds.")

    # -- per request -------------------------------------------------------------------------------
    async def finished(self, ctx: Any) -> None:
        """Finisher: one record per request, after its last byte. Never raises."""
        if not self.enabled:
            return
        try:
            self._finished(ctx, time.perf_counter())
        except Exception as exc:  # metrics must never fail a request
            logger.debug("request metrics not recorded: %s", exc)

    def _finished(self, ctx: Any, now: float) -> None:
        tenant, model = tenant_label(ctx), model_label(ctx)
        self._requests.inc(1, tags={"tenant": tenant, "model": model, "operation": ctx.operation,
                                    "status": status_label(ctx.status), "code": code_label(ctx.error_code)})
        if ctx.model is None or ctx.tenant is None:
            return
        tags = {"tenant": tenant, "model": model}
        usage = ctx.usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        if prompt:
            self._tokens.inc(prompt, tags={**tags, "kind": "prompt"})
        if completion:
            self._tokens.inc(completion, tags={**tags, "kind": "completion"})
        if ctx.model.price is not None and (prompt or completion):
            self._cost.inc(ctx.model.price.cost_yen(prompt, completion), tags=tags)
        if ctx.status != 200:
            return
        self._e2e.observe(now - ctx.started_at, tags=tags)
        if ctx.stream and ctx.first_byte_at is not None and ctx.operation in _TOKEN_STREAMS:
            self._ttft.observe(ctx.first_byte_at - ctx.started_at, tags=tags)
            if completion > 1:
                self._tpot.observe((now - ctx.first_byte_at) / (completion - 1), tags=tags)

    # -- events --------------------------------------------------------------------------------------
    def store_up(self, up: bool) -> None:
        if self.enabled:
            self._store_up.set(1 if up else 0)

    def store_command(self, command: str, seconds: float) -> None:
        if self.enabled:
            self._store_seconds.observe(seconds, tags={"command": command})

    def quota_rejected(self, tenant: str, limit: str) -> None:
        if self.enabled:
            self._quota.inc(tags={"tenant": tenant, "limit": limit})

    def feedback(self, model: str, rating: int) -> None:
        if self.enabled:
            self._feedback.inc(tags={"model": model, "rating": "up" if rating > 0 else "down"})

    def audit_pending(self, count: int) -> None:
        if self.enabled:
            self._audit_pending.set(count)

    def audit_upload_failed(self) -> None:
        if self.enabled:
            self._audit_upload_failures.inc()

    def pii_found(self, tenant: str, entity: str, where: str, count: int) -> None:
        if self.enabled:
            self._pii_found.inc(count, tags={"tenant": tenant, "type": entity, "where": where})

    def pii_decision(self, tenant: str, decision: str) -> None:
        if self.enabled:
            self._pii_decisions.inc(tags={"tenant": tenant, "decision": decision})

    # -- sampled (serving/router/metrics/sampler.py) -------------------------------------------------------
    def start_counters(self, models: list[str], limited: dict[str, list[str]]) -> None:
        """Export the rare-event counters at 0 for every declared label set.

        A counter that never moved has no series, and `rate()` over no series is nothing
        rather than 0: alerts and dashboards would see "no data" where the answer is "none".
        Ray's `Counter.inc` refuses 0, so the underlying record is used (Ray is pinned).
        """
        if not self.enabled:
            return
        for model in models:
            _zero(self._shed, {"model": model})
            _zero(self._failovers, {"model": model})
            for source in ("self", "peer"):
                _zero(self._ejections, {"model": model, "source": source})
        for tenant, limits in limited.items():
            for limit in limits:
                _zero(self._quota, {"tenant": tenant, "limit": limit})
        for counter in (self._audit_records, self._audit_uploaded, self._audit_upload_failures):
            _zero(counter, {})

    def router_model(self, router: str, model: str, *, inflight: int, queued: int, slots: int,
                     ready: int) -> None:
        if self.enabled:
            tags = {"router": router, "model": model}
            self._inflight.set(inflight, tags=tags)
            self._queued.set(queued, tags=tags)
            self._slots.set(slots, tags=tags)
            self._ready.set(ready, tags=tags)

    def shed(self, model: str, count: int) -> None:
        if self.enabled and count > 0:
            self._shed.inc(count, tags={"model": model})

    def ejections(self, model: str, source: str, count: int) -> None:
        if self.enabled and count > 0:
            self._ejections.inc(count, tags={"model": model, "source": source})

    def replica_choices(self, model: str, choice: str, count: int) -> None:
        if self.enabled and count > 0:
            self._choices.inc(count, tags={"model": model, "choice": choice})

    def failovers(self, model: str, count: int) -> None:
        if self.enabled and count > 0:
            self._failovers.inc(count, tags={"model": model})

    def budget(self, tenant: str, *, used: int, limit: int, reservations: int, reserved: int) -> None:
        if self.enabled:
            tags = {"tenant": tenant}
            self._budget_used.set(used, tags=tags)
            self._budget_limit.set(limit, tags=tags)
            self._budget_ratio.set(used / limit if limit else 0.0, tags=tags)
            self._reservations.set(reservations, tags=tags)
            self._reserved_tokens.set(reserved, tags=tags)

    def deferred_settlements(self, count: int) -> None:
        if self.enabled:
            self._deferred.set(count)

    def audit_backlog(self, *, oldest_age_s: float, spool_bytes: int) -> None:
        if self.enabled:
            self._audit_oldest.set(oldest_age_s)
            self._audit_bytes.set(spool_bytes)

    def audit_progress(self, *, records: int, segments: int) -> None:
        if self.enabled:
            if records > 0:
                self._audit_records.inc(records)
            if segments > 0:
                self._audit_uploaded.inc(segments)


def _zero(counter: Any, tags: dict[str, str]) -> None:
    counter._record(0.0, tags=tags)
