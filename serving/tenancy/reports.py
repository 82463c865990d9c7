"""Reports over the shared store: usage per tenant and month, feedback per model.

`usage` reads the monthly ledger the router settles into (tokens in/out per
model, requests and tokens per confidentiality level and usage type). The
periodic-report view maps it onto the government's periodic AI-system report
(各府省庁生成AIシステム定期報告): usage type, and the confidentiality of the
data handled.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from serving.config import TenantSettings
from serving.config.vendor import Price
from serving.store import StoreKeyspace

USAGE_TYPE_LABELS = {
    "general-1": "汎用1 general-purpose, direct prompting",
    "general-2": "汎用2 general-purpose, prompt templates",
    "specialised-1": "特化1 specialised, RAG",
    "specialised-2": "特化2 specialised, fine-tuned",
}
CONFIDENTIALITY_LABELS = {
    "0": "not recorded",
    "1": "機密性1 only",
    "2": "機密性2 in prompts",
}


def _ints(raw: dict) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def usage(client, keys: StoreKeyspace, tenant: str, month: str,
          prices: dict[str, Price] | None = None) -> dict[str, Any]:
    """The month's ledger of one tenant; with `prices` (model id -> Price) also cost in yen.

    Cost is computed here from the ledger's token counts and the prices declared in the
    spec now, so a corrected price re-prices the month; models without a price cost None.
    """
    fields = _ints(client.hgetall(keys.ledger(tenant, month)))
    models: dict[str, dict[str, int]] = defaultdict(dict)
    levels: dict[str, dict[str, int]] = defaultdict(dict)
    usage_types: dict[str, dict[str, int]] = defaultdict(dict)
    for field, value in fields.items():
        kind, _, rest = field.partition("|")
        name, _, metric = rest.rpartition("|")
        target = {"model": models, "level": levels, "usage_type": usage_types}.get(kind)
        if target is not None:
            target[name][metric] = value
    per_model = {
        m: {"requests": v.get("requests", 0), "prompt_tokens": v.get("prompt_tokens", 0),
            "completion_tokens": v.get("completion_tokens", 0)}
        for m, v in sorted(models.items())
    }
    cost: float | None = None
    if prices is not None:
        for m, row in per_model.items():
            price = prices.get(m)
            row["cost_yen"] = (round(price.cost_yen(row["prompt_tokens"], row["completion_tokens"]), 2)
                               if price is not None else None)
        cost = round(sum(r["cost_yen"] for r in per_model.values() if r["cost_yen"] is not None), 2)
    return {
        "tenant": tenant,
        "month": month,
        "requests": fields.get("requests", 0),
        "total_tokens": fields.get("total_tokens", 0),
        "cost_yen": cost,
        "models": per_model,
        "confidentiality": dict(sorted(levels.items())),
        "usage_types": dict(sorted(usage_types.items())),
    }


def periodic_report(report: dict[str, Any], tenant: TenantSettings | None) -> dict[str, Any]:
    """The month in the shape of the periodic AI-system report."""
    highest = max((int(level) for level in report["confidentiality"] if level != "0"), default=0)
    return {
        "organisation": tenant.name if tenant else report["tenant"],
        "kind": tenant.kind if tenant else None,
        "month": report["month"],
        "usage_types": {
            USAGE_TYPE_LABELS.get(u, u): v for u, v in report["usage_types"].items()
        },
        "confidentiality_of_handled_data": CONFIDENTIALITY_LABELS.get(str(highest), str(highest)),
        "models_used": sorted(report["models"]),
        "requests": report["requests"],
        "tokens": report["total_tokens"],
        "cost_yen": report.get("cost_yen"),
        "training_use": "prohibited",
    }


def feedback_summary(client, keys: StoreKeyspace, model_ids: list[str]) -> list[dict[str, Any]]:
    rows = []
    for model in model_ids:
        counts = _ints(client.hgetall(keys.feedback(model)))
        up, down = counts.get("up", 0), counts.get("down", 0)
        rows.append({"model": model, "up": up, "down": down,
                     "satisfaction": round(up / (up + down), 3) if up + down else None})
    return rows
