"""The policy engine: findings + the tenant's and models' policies -> one decision.

Rules, in order (docs/pii.md states them for operators):

1. Each type found (at or above the policy's `min_score`) gets the tenant
   policy's action at the request's confidentiality level.
2. `refuse` for any type refuses the request (400, naming the types).
3. `route` raises the request to `route_level` (2): the tenant must be cleared
   for it and only candidate models whose `max_confidentiality` allows it stay
   (403 otherwise, as the confidentiality router answers).
4. Models' own policies only make things stricter: a candidate whose policy
   refuses a found type (or routes it while it is below level 2) is dropped
   for this request; if none is left the request is refused. A model policy's
   `mask` masks for every candidate (the body is shared by the fallbacks).
5. `mask` replaces each value of a masked type with its placeholder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from serving.config.pii import STRICTNESS, PIIPolicy
from serving.config.pii_entities import LABELS, placeholder
from serving.pii.detector import Finding


@dataclass
class Decision:
    """What the guard decided for one request; `summary()` is what the audit record keeps."""

    counts: dict[str, int]
    actions: dict[str, str]
    refused_types: list[str] = field(default_factory=list)
    route_level: int | None = None
    dropped_models: list[str] = field(default_factory=list)

    @property
    def masked_types(self) -> frozenset[str]:
        return frozenset(t for t, a in self.actions.items() if a == "mask")

    @property
    def outcome(self) -> str:
        if self.refused_types:
            return "refuse"
        ranked = sorted(self.actions.values(), key=STRICTNESS.__getitem__)
        return ranked[-1] if ranked else "allow"

    def summary(self) -> dict:
        return {"decision": self.outcome, "types": dict(self.counts), "actions": dict(self.actions),
                "route_level": self.route_level, "dropped_models": self.dropped_models or None}


def describe(types: list[str] | dict[str, int]) -> str:
    """`個人番号 (JP_MY_NUMBER) x2, ...`: types and counts, never values."""
    counts = types if isinstance(types, dict) else Counter(types)
    return ", ".join(f"{LABELS[t]} ({t}) x{n}" for t, n in sorted(counts.items()))


def decide(findings: list[Finding], tenant: PIIPolicy | None, level: int) -> Decision:
    """Rules 1-2 (and the mask set) from the tenant's policy; routing and models come after."""
    counts = Counter(f.entity for f in findings)
    actions = {t: (tenant.action(t, level) if tenant else "allow") for t in counts}
    return Decision(counts=dict(counts), actions=actions,
                    refused_types=sorted(t for t, a in actions.items() if a == "refuse"))


def model_action(policy: PIIPolicy | None, entity: str, level: int) -> str:
    return policy.action(entity, level) if policy is not None else "allow"


def mask_text(text: str, findings: list[Finding], types: frozenset[str],
              numbering: dict[str, str] | None = None) -> str:
    """`text` with each finding of `types` replaced by its placeholder.

    With `numbering` (placeholder -> original, shared across one request's texts),
    placeholders are numbered per type so the originals can be restored in the
    answer; the same value gets the same placeholder.
    """
    out: list[str] = []
    pos = 0
    for f in findings:
        if f.entity not in types or f.start < pos:
            continue
        out.append(text[pos:f.start])
        if numbering is None:
            out.append(placeholder(f.entity))
        else:
            value = text[f.start:f.end]
            token = next((k for k, v in numbering.items() if v == value and
                          k.startswith("[" + LABELS[f.entity] + "_")), None)
            if token is None:
                count = sum(1 for k in numbering if k.startswith("[" + LABELS[f.entity] + "_"))
                token = placeholder(f.entity, count + 1)
                numbering[token] = value
            out.append(token)
        pos = f.end
    out.append(text[pos:])
    return "".join(out)
