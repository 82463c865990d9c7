"""The router step: scan the prompt, then allow, mask, refuse or route, and arm the output filter.

It runs after the confidentiality policy (it needs the request's level and the
candidate models) and before quota admission. A tenant without a policy, on
models without one, costs one attribute check. Nothing here logs or raises
a value: errors and the audit record carry types and counts only.
"""

from __future__ import annotations

import json
from typing import Any

from serving.config import ServingConfig
from serving.config.pii import PIIPolicy
from serving.config.pii_entities import ENTITY_TYPES
from serving.pii.detector import Detector, Finding
from serving.pii.policy import Decision, decide, describe, mask_text, model_action
from serving.pii.stream import OutputFilter
from serving.request import APIError, RequestContext
from serving.texts import text_slots


def _texts(ctx: RequestContext) -> list[tuple[Any, Any]]:
    """(container, key) of every prompt text of the request, in order (serving/texts.py)."""
    return text_slots(ctx.operation, ctx.payload or {})


class PIIGuard:
    """serving/pii as a request-path step (docs/pii.md)."""

    def __init__(self, config: ServingConfig, metrics: Any = None):
        self._metrics = metrics
        self._detectors: dict[bool, Detector] = {}
        self._any_model_policy = any(m.pii is not None for m in config.models)
        if any(p.names for p in self._policies_of(config)):
            self._detector(True)  # load the dictionary at start, not on a request

    @staticmethod
    def _policies_of(config: ServingConfig) -> list[PIIPolicy]:
        return [p for p in [*(t.pii for t in config.tenants), *(m.pii for m in config.models)] if p]

    @classmethod
    def for_config(cls, config: ServingConfig, metrics: Any = None) -> list[PIIGuard]:
        """The step, or nothing when no tenant or model has a policy."""
        return [cls(config, metrics)] if cls._policies_of(config) else []

    def _detector(self, names: bool) -> Detector:
        detector = self._detectors.get(names)
        if detector is None:
            detector = self._detectors[names] = Detector(names=names)
        return detector

    async def __call__(self, ctx: RequestContext) -> None:
        tenant_policy = ctx.tenant.pii if ctx.tenant is not None else None
        model_policies = [m.pii for m in ctx.candidates if m.pii is not None] if self._any_model_policy else []
        policies = [p for p in (tenant_policy, *model_policies) if p is not None]
        if not policies or not any(p.acts() for p in policies):
            return
        slots = _texts(ctx)
        detector = self._detector(any(p.names for p in policies))
        min_score = min(p.min_score for p in policies)
        per_slot = [detector.findings(c[k], min_score=min_score) for c, k in slots]
        found: list[Finding] = [f for fs in per_slot for f in fs]
        level = ctx.confidentiality or 1
        decision = decide(found, tenant_policy, level)
        tenant = ctx.tenant.id if ctx.tenant else "anonymous"
        ctx.pii = decision.summary()
        self._count(tenant, decision, "prompt")
        if decision.refused_types:
            raise self._refusal(ctx, {t: decision.counts[t] for t in decision.refused_types})
        if "route" in decision.actions.values():
            self._route(ctx, decision)
        if model_policies:
            self._apply_models(ctx, decision)
        ctx.pii = decision.summary()
        masked = decision.masked_types
        restore: dict[str, str] | None = None
        if masked:
            restore = {} if tenant_policy is not None and tenant_policy.restore else None
            for (container, key), fs in zip(slots, per_slot, strict=True):
                if any(f.entity in masked for f in fs):
                    container[key] = mask_text(container[key], fs, masked, restore)
            ctx.raw_body = json.dumps(ctx.payload, ensure_ascii=False).encode()
        self._arm_output(ctx, policies, ctx.confidentiality or level, detector, restore, tenant)

    def _arm_output(self, ctx: RequestContext, policies: list[PIIPolicy], level: int,
                    detector: Detector, restore: dict[str, str] | None, tenant: str) -> None:
        types = frozenset(t for t in ENTITY_TYPES if t != "PERSON" and any(
            p.scan_output and p.action(t, level) in ("mask", "refuse") for p in policies))
        if not types and not restore:
            return
        metrics = self._metrics

        def found(counts: dict[str, int]) -> None:
            if metrics is not None:
                for entity, n in counts.items():
                    metrics.pii_found(tenant, entity, "answer", n)

        ctx.output_filter = OutputFilter(detector, types, operation=ctx.operation, restore=restore,
                                         on_found=found)

    def _route(self, ctx: RequestContext, decision: Decision) -> None:
        routed = [t for t, a in decision.actions.items() if a == "route"]
        level = 2
        decision.route_level = level
        tenant = ctx.tenant
        if tenant is not None and tenant.max_confidentiality < level:
            raise APIError(
                403, f"The request contains personal information ({describe({t: decision.counts[t] for t in routed})}) "
                f"that may only go to confidentiality level {level} models, and tenant '{tenant.id}' "
                f"is cleared up to level {tenant.max_confidentiality}.",
                code="confidentiality_not_permitted", param="messages",
            )
        cleared = tuple(m for m in ctx.candidates if m.max_confidentiality >= level)
        if not cleared:
            names = ", ".join(m.id for m in ctx.candidates)
            raise APIError(
                403, f"The request contains personal information ({describe({t: decision.counts[t] for t in routed})}) "
                f"that may only go to models approved for confidentiality level {level}; {names} "
                "is not. Choose an approved model or remove the information.",
                code="model_not_approved_for_confidentiality", param="model",
            )
        ctx.candidates = cleared
        ctx.confidentiality = level

    def _apply_models(self, ctx: RequestContext, decision: Decision) -> None:
        level = ctx.confidentiality or 1
        kept = []
        for model in ctx.candidates:
            acts = {t: model_action(model.pii, t, level) for t in decision.counts}
            if any(a == "refuse" or (a == "route" and model.max_confidentiality < 2) for a in acts.values()):
                decision.dropped_models.append(model.id)
                continue
            kept.append(model)
            for t, a in acts.items():
                if a == "mask" and decision.actions[t] in ("allow", "route"):
                    decision.actions[t] = "mask"
        if not kept:
            refused = {t: decision.counts[t] for t in decision.counts}
            raise self._refusal(ctx, refused, models=decision.dropped_models)
        ctx.candidates = tuple(kept)

    @staticmethod
    def _refusal(ctx: RequestContext, types: dict[str, int], models: list[str] | None = None) -> APIError:
        where = f" for {', '.join(models)}" if models else ""
        return APIError(
            400, f"The request contains personal information that the policy{where} does not "
            f"allow: {describe(types)}. Remove or mask it and send the request again.",
            code="pii_refused", param="messages" if ctx.operation == "chat" else "prompt",
        )

    def _count(self, tenant: str, decision: Decision, where: str) -> None:
        if self._metrics is None:
            return
        for entity, n in decision.counts.items():
            self._metrics.pii_found(tenant, entity, where, n)
        if decision.counts:
            self._metrics.pii_decision(tenant, decision.outcome)
