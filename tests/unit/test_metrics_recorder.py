"""What the router records per request: which metrics, with which labels, for which requests.

The recorder is built on a recording double of `ray.util.metrics` (Counter, Gauge, Histogram
with Ray's signatures) so the branches can be seen without a Ray runtime; Ray's real recorder
and Prometheus are exercised by tests/integration/test_prometheus.py and its cost by
`python -m loadtest.bench_metrics`."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from serving.config import ModelRoute, TenantSettings
from serving.config.vendor import Price
from serving.request import Principal, RequestContext
from serving.router.metrics.recorder import RouterMetrics

MODEL = ModelRoute(id="m", max_model_len=1000, price=Price(input_yen_per_million=1e6, output_yen_per_million=2e6))
CITY = TenantSettings(id="city", name="市", kind="municipality")


class _Metric:
    def __init__(self, name: str, description: str = "", tag_keys=(), boundaries=None):
        self.name, self.tag_keys, self.calls = name, tuple(tag_keys), []

    def _record(self, value, tags=None):
        tags = tags or {}
        assert set(tags) == set(self.tag_keys), (self.name, tags)  # Ray refuses missing tags
        assert all(isinstance(v, str) for v in tags.values())
        self.calls.append((value, tags))

    inc = observe = set = _record


def _metrics() -> RouterMetrics:
    metrics = RouterMetrics.__new__(RouterMetrics)
    metrics._define(SimpleNamespace(Counter=_Metric, Gauge=_Metric, Histogram=_Metric))
    metrics.enabled = True
    return metrics


def _ctx(operation: str = "chat", **fields) -> RequestContext:
    c = RequestContext(request_id=uuid.uuid4().hex, operation=operation, scope={"headers": []})
    c.principal = Principal(tenant="city", user="u", method="api_key")
    c.tenant = CITY
    for k, v in fields.items():
        setattr(c, k, v)
    return c


def _answered(operation: str = "chat", stream: bool = True, completion: int = 11) -> RequestContext:
    c = _ctx(operation, model=MODEL, candidates=(MODEL,), stream=stream, status=200,
             usage={"prompt_tokens": 5, "completion_tokens": completion})
    c.first_byte_at = c.started_at + 0.25
    return c


def test_an_answered_stream_records_everything_once():
    m = _metrics()
    m._finished(_answered(), _answered().started_at + 1.25)
    assert m._requests.calls == [(1, {"tenant": "city", "model": "m", "operation": "chat", "status": "200",
                                      "code": ""})]
    assert [v for v, _ in m._tokens.calls] == [5, 11]
    assert m._cost.calls == [(5 + 22, {"tenant": "city", "model": "m"})]
    assert len(m._e2e.calls) == len(m._ttft.calls) == len(m._tpot.calls) == 1


def test_timings_are_the_requests():
    m, c = _metrics(), _answered(completion=11)
    m._finished(c, c.started_at + 1.25)
    assert abs(m._e2e.calls[0][0] - 1.25) < 1e-9
    assert abs(m._ttft.calls[0][0] - 0.25) < 1e-9
    assert abs(m._tpot.calls[0][0] - 1.0 / 10) < 1e-9  # one second for the 10 tokens after the first


def test_no_ttft_where_the_first_byte_is_not_a_token():
    m = _metrics()
    for c in (_answered("responses"), _answered("embeddings", stream=False), _answered(stream=False),
              _answered(completion=1)):
        m._finished(c, c.started_at + 1)
    assert len(m._e2e.calls) == 4
    assert len(m._ttft.calls) == 1 and len(m._tpot.calls) == 0  # only the 1-token chat stream: no TPOT


def test_refusals_count_with_their_code_and_nothing_else():
    m = _metrics()
    refused = _ctx(candidates=(MODEL,), status=429, error_code="requests_per_minute_exceeded")
    stranger = _ctx(status=401, error_code="invalid_api_key")
    stranger.principal = stranger.tenant = None
    vendor = _answered()
    vendor.status, vendor.error_code = 502, "a_vendors_own_code"
    for c in (refused, stranger, vendor):
        m._finished(c, c.started_at + 1)
    labels = [tags for _, tags in m._requests.calls]
    assert labels[0]["code"] == "requests_per_minute_exceeded" and labels[0]["model"] == "m"
    assert (labels[1]["tenant"], labels[1]["model"]) == ("unauthenticated", "none")
    assert labels[2]["code"] == "other"
    assert m._e2e.calls == [] and m._ttft.calls == []  # only answers (200) have latencies


def test_rare_counters_start_at_zero_for_declared_label_sets():
    m = _metrics()
    m.start_counters(["a", "b"], {"city": ["requests_per_minute", "monthly_token_budget"]})
    assert {tags["model"] for _, tags in m._shed.calls} == {"a", "b"}
    assert {(t["model"], t["source"]) for _, t in m._ejections.calls} == {
        ("a", "self"), ("a", "peer"), ("b", "self"), ("b", "peer")}
    assert {t["limit"] for _, t in m._quota.calls} == {"requests_per_minute", "monthly_token_budget"}
    assert all(v == 0 for metric in (m._shed, m._ejections, m._quota, m._audit_records) for v, _ in metric.calls)
