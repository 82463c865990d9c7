"""The router's own metrics, exported through Ray's metrics agent (each node's metrics port).

Only rare or periodic events are recorded here (store health, quota refusals,
feedback, audit backlog): recording a Ray metric costs microseconds of Python,
which per streamed chunk would show up in the benchmarks. Request counts and
latencies come from Ray Serve's own per-replica metrics.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("govllm.metrics")


class RouterMetrics:
    def __init__(self) -> None:
        try:
            from ray.util import metrics

            self._store_up = metrics.Gauge(
                "govllm_quota_store_up", description="1 when the shared store answers, else 0."
            )
            self._quota = metrics.Counter(
                "govllm_quota_rejections_total",
                description="Requests refused by a tenant limit.",
                tag_keys=("tenant", "limit"),
            )
            self._feedback = metrics.Counter(
                "govllm_feedback_total",
                description="User ratings of answers, per model.",
                tag_keys=("model", "rating"),
            )
            self._audit_pending = metrics.Gauge(
                "govllm_audit_pending_records",
                description="Audit records spooled locally and not yet in the object store.",
            )
            self._tokens = metrics.Counter(
                "govllm_tokens_total",
                description="Tokens billed, per tenant, model and kind (prompt, completion).",
                tag_keys=("tenant", "model", "kind"),
            )
            self._cost = metrics.Counter(
                "govllm_cost_yen_total",
                description="Cost in yen from the model's declared price, per tenant and model "
                "(per month: the increase over the month).",
                tag_keys=("tenant", "model"),
            )
            self._audit_upload_failures = metrics.Counter(
                "govllm_audit_upload_failures_total", description="Failed audit batch uploads."
            )
            self._pii_found = metrics.Counter(
                "govllm_pii_findings_total",
                description="Personal information found, per tenant and type, in prompts or answers "
                "(counts only, never values).",
                tag_keys=("tenant", "type", "where"),
            )
            self._pii_decisions = metrics.Counter(
                "govllm_pii_decisions_total",
                description="Requests with personal information, per tenant and decision.",
                tag_keys=("tenant", "decision"),
            )
            self.enabled = True
        except Exception as exc:  # no Ray runtime (unit tests, CLI): metrics are no-ops
            logger.debug("router metrics disabled: %s", exc)
            self.enabled = False

    def store_up(self, up: bool) -> None:
        if self.enabled:
            self._store_up.set(1 if up else 0)

    def quota_rejected(self, tenant: str, limit: str) -> None:
        if self.enabled:
            self._quota.inc(tags={"tenant": tenant, "limit": limit})

    def feedback(self, model: str, rating: int) -> None:
        if self.enabled:
            self._feedback.inc(tags={"model": model, "rating": "up" if rating > 0 else "down"})

    async def billed(self, ctx) -> None:
        """Finisher: tokens and cost of a request that a model answered (labels: declared ids only)."""
        if not self.enabled or ctx.model is None or ctx.tenant is None or not ctx.usage:
            return
        prompt = int(ctx.usage.get("prompt_tokens") or 0)
        completion = int(ctx.usage.get("completion_tokens") or 0)
        tags = {"tenant": ctx.tenant.id, "model": ctx.model.id}
        if prompt:
            self._tokens.inc(prompt, tags={**tags, "kind": "prompt"})
        if completion:
            self._tokens.inc(completion, tags={**tags, "kind": "completion"})
        if ctx.model.price is not None and (prompt or completion):
            self._cost.inc(ctx.model.price.cost_yen(prompt, completion), tags=tags)

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
