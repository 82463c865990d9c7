"""Per-request LLM metrics and their exact aggregation.

Every request becomes one `RequestRecord` (one JSON line in the raw log). Locust's own
percentiles are bucketed to about two significant digits, so SLO gates, the JSON summary and
the report compute percentiles from these records instead, with the same definition as
numpy's default (linear interpolation between closest ranks), which is what vLLM's benchmark
reports.

Definitions:
* TPOT = (E2E - TTFT) / (N - 1), N = output tokens from `usage`; undefined for N < 2.
* tokens/s of a request = N / E2E (what the user experiences end to end).
* outcome: "ok" (complete stream with usage), "error" (anything else that failed), "quota"
  (429: the tenant's limit, an expected answer, neither success nor failure).
* goodput = share of non-quota requests that completed and met every per-request SLO
  (vLLM benchmark definition: a failed request is not good); quota refusals are excluded
  because refusing them is the budget working, not the service missing its level.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OUTCOMES = ("ok", "error", "quota")
#: per-request distributions a gate or the report can ask for
DISTRIBUTIONS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "output_tokens", "prompt_tokens", "tokens_per_s")
PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """One generation request as the raw log stores it (times in milliseconds)."""

    t: float                      # wall-clock send time, seconds since the epoch
    scenario: str
    requested_model: str
    outcome: str                  # ok | error | quota
    model: str | None = None      # the model that answered (alias resolved)
    tenant: str | None = None
    status: int | None = None     # HTTP status (0: no response)
    error: str | None = None      # error code or message
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    tokens_per_s: float | None = None
    good: bool | None = None      # met every per-request SLO (None: no SLO file)
    worker: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def label_model(self) -> str:
        """The model column: the answering model, or the requested name when none answered."""
        return self.model or self.requested_model


def tpot_ms(e2e_ms: float, ttft_ms: float, output_tokens: int) -> float | None:
    """Time per output token after the first; None when there is no second token."""
    if output_tokens < 2:
        return None
    return (e2e_ms - ttft_ms) / (output_tokens - 1)


def tokens_per_s(output_tokens: int, e2e_ms: float) -> float | None:
    if e2e_ms <= 0:
        return None
    return output_tokens / (e2e_ms / 1000.0)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), numpy's default (linear) method; None if empty.

    The one definition every report and benchmark of this project uses (loadtest/, docs).
    """
    if len(values) == 0:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def values_of(records: Iterable[RequestRecord], metric: str) -> list[float]:
    """The samples of a distribution over completed requests (ITL: every gap of every request)."""
    out: list[float] = []
    for r in records:
        if r.outcome != "ok":
            continue
        if metric == "itl_ms":
            out.extend(r.itl_ms)
            continue
        value = getattr(r, metric)
        if value is not None:
            out.append(float(value))
    return out


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, min, max and the report percentiles of one metric."""
    if not values:
        return {"count": 0}
    out: dict[str, float | int | None] = {
        "count": len(values),
        "mean": sum(values) / len(values),
        "min": float(min(values)),
        "max": float(max(values)),
    }
    for q in (*PERCENTILES, 95):
        out[f"p{q}"] = percentile(values, q)
    return out


def rates(records: Sequence[RequestRecord], duration_s: float | None) -> dict[str, float | int | None]:
    """Outcome counts and the shares and throughputs gates are written against."""
    counts = {o: 0 for o in OUTCOMES}
    for r in records:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    total = sum(counts.values())
    served = counts["ok"] + counts["error"]
    graded = [r for r in records if r.outcome != "quota" and r.good is not None]
    good = sum(1 for r in graded if r.good)
    out_tokens = sum(r.output_tokens or 0 for r in records if r.outcome == "ok")
    result: dict[str, float | int | None] = {
        "requests": total,
        **counts,
        "error_rate": counts["error"] / total if total else None,
        "quota_rate": counts["quota"] / total if total else None,
        "goodput": good / len(graded) if graded else None,
        "good_requests": good,
        "output_tokens_total": out_tokens,
    }
    if duration_s and duration_s > 0:
        result["duration_s"] = duration_s
        result["throughput_rps"] = served / duration_s
        result["output_tokens_per_s"] = out_tokens / duration_s
        result["goodput_rps"] = good / duration_s
    return result


def summarise_group(records: Sequence[RequestRecord], duration_s: float | None) -> dict[str, Any]:
    out: dict[str, Any] = rates(records, duration_s)
    for metric in DISTRIBUTIONS:
        out[metric] = distribution(values_of(records, metric))
    return out


def run_duration(records: Sequence[RequestRecord]) -> float | None:
    """Seconds from the first send to the last completion."""
    if not records:
        return None
    start = min(r.t for r in records)
    end = max(r.t + (r.e2e_ms or 0) / 1000.0 for r in records)
    return max(end - start, 1e-9)


def summarise(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Overall, per scenario, per model and per (scenario, model) figures."""
    duration = run_duration(records)
    by_scenario: dict[str, list[RequestRecord]] = {}
    by_model: dict[str, list[RequestRecord]] = {}
    by_pair: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_scenario.setdefault(r.scenario, []).append(r)
        by_model.setdefault(r.label_model, []).append(r)
        by_pair.setdefault(f"{r.scenario} {r.label_model}", []).append(r)
    return {
        "overall": summarise_group(records, duration),
        "scenarios": {k: summarise_group(v, duration) for k, v in sorted(by_scenario.items())},
        "models": {k: summarise_group(v, duration) for k, v in sorted(by_model.items())},
        "scenario_models": {k: summarise_group(v, duration) for k, v in sorted(by_pair.items())},
    }


def read_records(path: Path) -> list[RequestRecord]:
    """The raw log; a torn last line (a run killed mid-write) is skipped."""
    out: list[RequestRecord] = []
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(RequestRecord.from_dict(json.loads(line)))
            except (ValueError, TypeError):
                continue
    return out
