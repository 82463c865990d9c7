"""The locust suite's pure parts: stream measurement, metrics, SLOs, shapes, prompts, report maths.

None of this imports locust or gevent (the locustfile's own behaviour is exercised against
the real stack in tests/integration/test_loadtest.py).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from loadtest.llmload import prompts
from loadtest.llmload.metrics import (
    RequestRecord,
    percentile,
    rates,
    read_records,
    summarise,
    tokens_per_s,
    tpot_ms,
)
from loadtest.llmload.prompts import TokenBudget
from loadtest.llmload.shapes import DAY_WEIGHTS, DayProfile, Spike, Steady, Step
from loadtest.llmload.slo import SLOError, evaluate, parse_slo
from loadtest.llmload.stream import StreamMeter
from loadtest.report import completions_per_bucket, time_buckets


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def chunk(content=None, role=None, usage=None, model="m"):
    delta = {k: v for k, v in (("content", content), ("role", role)) if v is not None}
    return {"model": model, "choices": [] if usage else [{"delta": delta, "finish_reason": None}],
            **({"usage": usage} if usage else {})}


# ---------------------------------------------------------------- stream measurement


def test_ttft_is_the_first_non_empty_content_and_tokens_come_from_usage():
    meter = StreamMeter(started_at=100.0)
    meter.feed(sse(chunk(role="assistant", content="")), 100.05)   # role-only first chunk
    meter.feed(sse(chunk(content="")), 100.08)                      # held-back multibyte char
    meter.feed(sse(chunk(content="会議")), 100.20)
    meter.feed(sse(chunk(content="の")) + sse(chunk(content="要約")), 100.30)  # one read, two events
    meter.feed(sse(chunk(usage={"prompt_tokens": 12, "completion_tokens": 7})), 100.31)
    meter.feed(sse(b"[DONE]"), 100.40)
    m = meter.result
    assert m.ttft_s == pytest.approx(0.20)
    assert m.e2e_s == pytest.approx(0.40)
    assert m.itl_s == pytest.approx([0.10, 0.0])
    assert (m.output_tokens, m.prompt_tokens) == (7, 12)   # not the 3 content chunks
    assert m.text == "会議の要約" and m.done and m.model == "m"


def test_events_split_across_reads_and_crlf_framing():
    meter = StreamMeter(started_at=0.0)
    data = sse(chunk(content="あ")) + sse(chunk(usage={"prompt_tokens": 1, "completion_tokens": 1}))
    data = data.replace(b"\n\n", b"\r\n\r\n") + b"data: [DONE]\r\n\r\n"
    for i, byte in enumerate(data):  # one byte per read
        meter.feed(bytes([byte]), i * 0.001)
    assert meter.result.done and meter.result.output_tokens == 1 and meter.result.text == "あ"


def test_missing_done_and_error_events_are_reported():
    meter = StreamMeter(started_at=0.0)
    meter.feed(sse(chunk(content="x")), 0.1)
    assert not meter.result.done
    meter.feed(sse({"error": {"message": "engine died", "code": 500}}), 0.2)
    assert meter.result.error == "engine died"


# ---------------------------------------------------------------- metrics


def test_tpot_and_tokens_per_second():
    assert tpot_ms(e2e_ms=1100.0, ttft_ms=100.0, output_tokens=101) == pytest.approx(10.0)
    assert tpot_ms(e2e_ms=500.0, ttft_ms=500.0, output_tokens=1) is None
    assert tokens_per_s(50, 2000.0) == pytest.approx(25.0)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentiles_match_numpy_linear(n):
    rng = random.Random(n)
    values = [rng.lognormvariate(5, 1) for _ in range(n)]
    for q in (0, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None


def rec(outcome="ok", ttft=100.0, e2e=1000.0, n=10, scenario="staff_chat", model="m1", good=None, t=0.0,
        itl=(10.0, 20.0)):
    r = RequestRecord(t=t, scenario=scenario, requested_model="default", outcome=outcome,
                      model=model if outcome == "ok" else None, good=good)
    if outcome == "ok":
        r.ttft_ms, r.e2e_ms, r.output_tokens, r.itl_ms = ttft, e2e, n, list(itl)
        r.tpot_ms = tpot_ms(e2e, ttft, n)
    return r


def test_quota_refusals_are_neither_errors_nor_in_goodput():
    records = [rec(good=True), rec(good=False), rec("error", good=False), rec("quota"), rec("quota")]
    r = rates(records, duration_s=10.0)
    assert (r["ok"], r["error"], r["quota"], r["requests"]) == (2, 1, 2, 5)
    assert r["error_rate"] == pytest.approx(1 / 5)
    assert r["quota_rate"] == pytest.approx(2 / 5)
    assert r["goodput"] == pytest.approx(1 / 3)          # good / (ok + error)
    assert r["throughput_rps"] == pytest.approx(0.3)      # quota answers are not served requests


def test_summary_groups_by_scenario_and_answering_model_and_pools_itl():
    records = [rec(model="a", ttft=100), rec(model="a", ttft=300), rec(model="b", ttft=50, scenario="rag")]
    s = summarise(records)
    assert s["models"]["a"]["ttft_ms"]["p50"] == pytest.approx(200)
    assert s["scenarios"]["rag"]["ttft_ms"]["count"] == 1
    assert set(s["scenario_models"]) == {"staff_chat a", "rag b"}
    assert s["overall"]["itl_ms"]["count"] == 6  # every gap of every request


def test_raw_log_round_trip_skips_a_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(rec().to_json() + "\n" + rec("quota").to_json() + "\n" + '{"t": 1, "scen')
    back = read_records(path)
    assert [r.outcome for r in back] == ["ok", "quota"] and back[0].itl_ms == [10.0, 20.0]


# ---------------------------------------------------------------- SLOs


def test_per_request_slo_defines_goodput():
    slo = parse_slo({"per_request": {"ttft_ms": 500, "tpot_ms": 50}})
    assert slo.meets(ttft_ms=400, tpot_ms=40, e2e_ms=9999)
    assert not slo.meets(ttft_ms=600, tpot_ms=40, e2e_ms=1)
    assert not slo.meets(ttft_ms=400, tpot_ms=51, e2e_ms=1)
    assert slo.meets(ttft_ms=400, tpot_ms=None, e2e_ms=1)  # a single token has no TPOT


def test_gates_pass_fail_scope_and_no_data():
    slo = parse_slo({
        "per_request": {"ttft_ms": 1000},
        "gates": [
            {"metric": "ttft_ms", "stat": "p50", "max": 250},
            {"metric": "error_rate", "max": 0.0},
            {"metric": "goodput", "min": 0.9},
            {"metric": "ttft_ms", "stat": "max", "max": 150, "scenario": "rag"},
            {"metric": "ttft_ms", "stat": "p90", "max": 1, "model": "no-such-model"},
            {"metric": "e2e_ms", "stat": "p99", "max": 5000, "scenario": "municipal"},
        ],
    })
    records = [rec(ttft=100, good=True), rec(ttft=300, good=True), rec(ttft=120, scenario="rag", good=True),
               rec(ttft=200, scenario="municipal/city-a", good=True), rec("quota", scenario="municipal/city-b")]
    results = evaluate(records, slo)
    assert [r.passed for r in results] == [True, True, True, True, False, True]
    assert results[0].value == pytest.approx(160)
    assert results[4].value is None  # no data is a failed gate, never a silent pass


@pytest.mark.parametrize("doc, field", [
    ({"gates": [{"metric": "ttft", "stat": "p90", "max": 1}]}, "unknown metric"),
    ({"gates": [{"metric": "ttft_ms", "max": 1}]}, "needs stat"),
    ({"gates": [{"metric": "error_rate", "stat": "p90", "max": 1}]}, "remove stat"),
    ({"gates": [{"metric": "ttft_ms", "stat": "p90", "max": 1, "min": 0}]}, "exactly one"),
    ({"gates": [{"metric": "goodput", "min": 0.9}]}, "needs per_request"),
    ({"per_request": {"ttft": 5}}, "per_request.ttft"),
    ({"slos": []}, "unknown keys"),
])
def test_bad_slo_files_name_the_problem(doc, field):
    with pytest.raises(SLOError, match=field):
        parse_slo(doc, "slo.yaml")


# ---------------------------------------------------------------- shapes


def test_steady_and_step():
    assert Steady(4, 2.0, run_time_s=10).tick(9.9) == (4, 2.0)
    assert Steady(4, 2.0, run_time_s=10).tick(10) is None
    step = Step(max_users=10, step_users=4, step_s=5, spawn_rate=1)
    assert [step.tick(t)[0] for t in (0, 4.9, 5, 10, 14.9)] == [4, 4, 8, 10, 10]
    assert step.tick(19.9)[0] == 10 and step.tick(20) is None  # 3 steps to reach 10, then 1 more


def test_spike():
    s = Spike(base_users=2, peak_users=10, spike_at_s=10, spike_s=5, run_time_s=30, spawn_rate=1, spike_rate=10)
    assert s.tick(0) == (2, 1)
    assert s.tick(10) == (10, 10) and s.tick(14.9)[0] == 10
    assert s.tick(15) == (2, 10)   # back down as fast as it went up
    assert s.tick(30) is None


def test_day_profile_activity_model_and_scaling():
    day = DayProfile(max_users=20, day_s=110)  # 11 office hours: 10 s per hour
    # 180,000 staff x 30% active x 40/60 h x 14% in the 10:00 hour = 5,040 people in a session
    assert day.sessions_at(10.5) == pytest.approx(180_000 * 0.3 * (40 / 60) * DAY_WEIGHTS[10])
    assert day.requests_per_s_at(10.5) == pytest.approx(5040 / 60)
    assert day.scale == pytest.approx(20 / (84 * 3.0))
    users = [day.tick(t)[0] for t in range(0, 110)]
    assert max(users) == 20 and users[25] == 20          # 10:30 is the peak
    assert users[45] < users[25] and users[45] < users[65]  # the lunch dip at 12:30
    assert min(users) >= 1 and day.tick(110) is None
    assert day.describe()["equivalent_headcount"] == round(180_000 * day.scale)


def test_small_headcount_is_not_scaled_up():
    day = DayProfile(max_users=50, day_s=60, headcount=600)
    assert day.scale == 1.0
    assert max(day.tick(t)[0] for t in range(60)) == round(day.modelled_users_at(10.5))


def test_day_weights_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        DayProfile(max_users=5, day_s=60, weights={9: 0.5, 10: 0.6})


# ---------------------------------------------------------------- prompts


def test_token_budget_clamps_to_the_context():
    budget = TokenBudget(tokens_per_char=2.0, overhead_tokens=100, max_model_len=2048)
    chars, clamped = budget.chars_for(8000, max_tokens=256)
    assert clamped and chars == int((int((2048 - 256) * 0.9) - 100) / 2.0)
    chars, clamped = budget.chars_for(500, max_tokens=256)
    assert not clamped and chars == 200
    assert TokenBudget(max_model_len=None).chars_for(8000, 256) == (8000 - 64, False)


def test_documents_reach_their_length_and_rag_context_is_shared():
    rng = random.Random(3)
    for target in (500, 3000, 9000):
        kind, text = prompts.document(rng, target)
        assert kind in {"notice", "minutes", "regulation", "report"}
        assert target * 0.9 <= len(text) <= target + 5, (target, len(text))
        assert "{" not in text  # every placeholder filled
    assert prompts.rag_context(2000) == prompts.rag_context(2000)
    assert prompts.rag_context(2000).startswith(prompts.prompt_set()["rag"]["instruction"])


def test_prompt_set_is_japanese_and_complete():
    data = prompts.prompt_set()
    assert len(data["staff_chat"]["questions"]) >= 30 and len(data["municipal"]["queries"]) >= 10
    system, question = prompts.chat_opening(random.Random(1))
    assert "{" not in question and any("\u3040" <= ch <= "\u30ff" for ch in question)


# ---------------------------------------------------------------- report maths


def test_report_buckets_by_send_and_completion_time():
    records = [rec(t=100.0, e2e=500), rec(t=100.5, e2e=2000), rec("quota", t=102.2), rec(t=103.9, e2e=100)]
    buckets = time_buckets(records, 1.0)
    assert [(start, len(g)) for start, g in buckets] == [(0.0, 2), (1.0, 0), (2.0, 1), (3.0, 1)]
    per = completions_per_bucket(records, 1.0)
    assert per["ok"] == [1.0, 0.0, 1.0, 0.0, 1.0]  # completions at 0.5, 2.5 and 4.0 s
    assert per["quota"][2] == 1.0 and per["tokens"][0] == 10.0


@pytest.mark.parametrize("doc, field", [
    ({"per_request": {"ttft_ms": True}}, r"per_request\.ttft_ms"),  # YAML `true` is not 1 ms
    ({"gates": [{"metric": "error_rate", "max": True}]}, r"gates\[0\]\.max"),
    ({"gates": [{"metric": "ttft_ms", "stat": "p90", "max": "fast"}]}, r"gates\[0\]\.max"),
    ({"per_request": {"e2e_ms": -5}}, r"per_request\.e2e_ms"),
    ({"gates": [{"metric": "ttft_ms", "stat": "p42", "max": 1}]}, r"gates\[0\]\.stat"),
])
def test_slo_values_are_validated_strictly(doc, field):
    with pytest.raises(SLOError, match=field):
        parse_slo(doc, "slo.yaml")


def test_the_shipped_slo_files_still_load():
    from pathlib import Path

    from loadtest.llmload.slo import load_slo

    for path in (Path(__file__).parents[2] / "loadtest" / "slo").glob("*.yaml"):
        assert load_slo(path).gates, path


def test_percentiles_are_computed_one_way_everywhere():
    """Reports, SLO gates and the benchmarks all use numpy's percentile (linear)."""
    import numpy as np

    from loadtest.bench_audit import _us
    from loadtest.bench_tenancy import _percentiles
    from loadtest.llmload.metrics import percentile

    samples = [0.5, 3.0, 1.0, 7.5, 2.0, 11.0, 4.0]  # 7 samples: the methods that existed disagree
    for q in (50, 90, 99):
        assert percentile(samples, q) == pytest.approx(np.percentile(samples, q))
    assert _percentiles(samples) == {f"p{q}_us": round(float(np.percentile(samples, q)), 1)
                                     for q in (50, 90, 99)}
    assert _us(samples) == {f"p{q}": round(1e6 * float(np.percentile(samples, q)), 1) for q in (50, 99)}
    assert percentile([], 50) is None
