"""Service level objectives from YAML: per-request limits (goodput) and run gates.

```yaml
per_request:          # a request is "good" when it meets all of these (vLLM goodput)
  ttft_ms: 2000
  tpot_ms: 150
  e2e_ms: 30000
gates:                # the run fails (exit 3) when any gate fails
  - {metric: ttft_ms, stat: p90, max: 1500}
  - {metric: itl_ms, stat: p90, max: 200}
  - {metric: error_rate, max: 0.01}
  - {metric: goodput, min: 0.95}
  - {metric: ttft_ms, stat: p99, max: 4000, scenario: staff_chat, model: tiny-llama-ja}
```

A gate over a distribution (`ttft_ms`, `tpot_ms`, `itl_ms`, `e2e_ms`, `output_tokens`,
`prompt_tokens`, `tokens_per_s`) needs a `stat` (p50, p90, p95, p99, mean, min, max); rate
metrics (`error_rate`, `quota_rate`, `goodput`, `throughput_rps`, `output_tokens_per_s`,
`goodput_rps`, `requests`) take none. A gate that no request matched fails: a gate that
cannot be checked is not a passed gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from loadtest.llmload.metrics import (
    DISTRIBUTIONS,
    RequestRecord,
    distribution,
    rates,
    run_duration,
    values_of,
)
from serving.strict import StrictModel

PER_REQUEST_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")
RATE_METRICS = ("error_rate", "quota_rate", "goodput", "throughput_rps", "output_tokens_per_s",
                "goodput_rps", "requests")
STATS = ("p50", "p90", "p95", "p99", "mean", "min", "max")


class SLOError(ValueError):
    """An SLO file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Gate:
    metric: str
    stat: str | None = None
    max: float | None = None
    min: float | None = None
    scenario: str | None = None
    model: str | None = None

    def describe(self) -> str:
        scope = "".join(f" {k}={v}" for k, v in (("scenario", self.scenario), ("model", self.model)) if v)
        what = f"{self.metric} {self.stat}" if self.stat else self.metric
        bound = f"<= {self.max:g}" if self.max is not None else f">= {self.min:g}"
        return f"{what}{scope} {bound}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.describe(), "value": self.value, "passed": self.passed}


@dataclass(frozen=True)
class SLOSet:
    per_request: dict[str, float]
    gates: tuple[Gate, ...]
    source: str = "<inline>"

    def meets(self, ttft_ms: float | None, tpot_ms: float | None, e2e_ms: float | None) -> bool:
        """A completed request against every per-request limit (an undefined TPOT passes)."""
        observed = {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "e2e_ms": e2e_ms}
        for key, limit in self.per_request.items():
            value = observed[key]
            if value is None:
                if key == "tpot_ms":
                    continue  # one output token: no TPOT to miss
                return False
            if value > limit:
                return False
        return True


Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # strict: `true` is not a number


class _PerRequest(StrictModel):
    ttft_ms: Annotated[Number, Field(gt=0)] | None = None
    tpot_ms: Annotated[Number, Field(gt=0)] | None = None
    e2e_ms: Annotated[Number, Field(gt=0)] | None = None


class _Gate(StrictModel):
    metric: Literal[DISTRIBUTIONS + RATE_METRICS]  # type: ignore[valid-type]
    stat: Literal[STATS] | None = None  # type: ignore[valid-type]
    max: Number | None = None
    min: Number | None = None
    scenario: str | None = None
    model: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _Gate:
        if self.metric in DISTRIBUTIONS and self.stat is None:
            raise ValueError(f"{self.metric} needs stat, one of {', '.join(STATS)}")
        if self.metric in RATE_METRICS and self.stat is not None:
            raise ValueError(f"{self.metric} is a rate; remove stat")
        if (self.max is None) == (self.min is None):
            raise ValueError("give exactly one of max or min")
        return self


class _SLOFile(StrictModel):
    """The SLO file's schema, validated by pydantic like the cluster spec."""

    per_request: _PerRequest = Field(default_factory=_PerRequest)
    gates: list[_Gate] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_empty(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in ("per_request", "gates")}
        return data


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[")):
            out += f".{part}" if out else str(part)
    return out


def parse_slo(data: Any, source: str = "<inline>") -> SLOSet:
    """Validate an SLO document; raises SLOError naming the file and the field."""
    if not isinstance(data, dict):
        raise SLOError(f"{source}: an SLO file is a mapping with per_request and/or gates")
    unknown = set(data) - set(_SLOFile.model_fields)
    if unknown:
        raise SLOError(f"{source}: unknown keys {sorted(unknown)}; allowed: per_request, gates")
    try:
        doc = _SLOFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where, msg = _field(err["loc"]), err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown; allowed: {', '.join(PER_REQUEST_KEYS)}" if where.startswith(
                    "per_request") else "unknown key"
            elif err["type"] == "literal_error" and where.endswith("metric"):
                msg = (f"unknown metric {err.get('input')!r}; one of "
                       f"{', '.join(DISTRIBUTIONS + RATE_METRICS)}")
            problems.append(f"{source}: {where}: {msg}" if where else f"{source}: {msg}")
        raise SLOError("; ".join(problems)) from None
    per_request = {k: v for k, v in doc.per_request.model_dump().items() if v is not None}
    for i, gate in enumerate(doc.gates):
        if gate.metric == "goodput" and not per_request:
            raise SLOError(f"{source}: gates[{i}]: goodput needs per_request limits to say what a "
                           "good request is")
    gates = tuple(Gate(metric=g.metric, stat=g.stat, max=g.max, min=g.min, scenario=g.scenario,
                       model=g.model) for g in doc.gates)
    return SLOSet(per_request={k: float(v) for k, v in per_request.items()}, gates=gates, source=source)


def load_slo(path: str | Path) -> SLOSet:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SLOError(f"{p}: cannot read SLO file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SLOError(f"{p}: not valid YAML: {exc}") from None
    return parse_slo(data, str(p))


def _scoped(records: Sequence[RequestRecord], gate: Gate) -> list[RequestRecord]:
    def scenario_matches(r: RequestRecord) -> bool:
        # "municipal" matches every tenant's "municipal/<tenant>" scenario
        return r.scenario == gate.scenario or r.scenario.startswith(f"{gate.scenario}/")

    return [r for r in records
            if (gate.scenario is None or scenario_matches(r))
            and (gate.model is None or gate.model in (r.model, r.requested_model))]


def gate_value(records: Sequence[RequestRecord], gate: Gate, duration_s: float | None) -> float | None:
    scoped = _scoped(records, gate)
    if not scoped:
        return None
    if gate.metric in DISTRIBUTIONS:
        value = distribution(values_of(scoped, gate.metric)).get(gate.stat or "")
        return None if value is None else float(value)
    value = rates(scoped, duration_s).get(gate.metric)
    return None if value is None else float(value)


def evaluate(records: Sequence[RequestRecord], slo: SLOSet) -> list[GateResult]:
    """Every gate against the records; a gate without data fails."""
    duration = run_duration(records)
    results = []
    for gate in slo.gates:
        value = gate_value(records, gate, duration)
        if value is None:
            passed = False
        elif gate.max is not None:
            passed = value <= gate.max
        else:
            passed = value >= (gate.min or 0.0)
        results.append(GateResult(gate, value, passed))
    return results
