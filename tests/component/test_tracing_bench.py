"""The tracing variant of `make bench` measures what it claims: its stack's spec traces every
request to the bench's OTLP sink, the sink counts what a real exporter sends it, and the
on/off comparison is per round (loadtest/bench_stacks.py)."""

from __future__ import annotations

from types import SimpleNamespace

import yaml

from cluster.spec.schema import ClusterSpec
from loadtest.bench_stacks import build_stacks, govllm_ratios
from loadtest.otlp_sink import OTLPSink
from serving.config.tracing import TracingSettings
from serving.observability.tracing.spans import build_tracer
from serving.request import RequestContext


def test_only_the_traced_variant_traces_and_its_spec_is_valid(tmp_path):
    stacks = build_stacks(tmp_path, tmp_path / "model", ["govllm", "govllm-traced"],
                          trace_endpoint="http://127.0.0.1:4318/v1/traces")
    specs = [ClusterSpec.model_validate(yaml.safe_load(open(s.command[-1]))) for s in stacks]
    assert [s.tracing.enabled for s in specs] == [False, True]
    traced = specs[1].tracing
    assert traced.endpoint == "http://127.0.0.1:4318/v1/traces" and traced.sample_ratio == 1.0
    assert specs[0].auth.enabled and specs[1].auth.enabled  # both the full profile otherwise
    assert specs[0].audit.enabled and specs[1].audit.enabled


def test_the_sink_counts_what_the_router_exports():
    sink = OTLPSink().start()
    try:
        tracer = build_tracer(TracingSettings(enabled=True, endpoint=sink.url),
                              app="bench", instance="r")
        for _ in range(3):
            ctx = RequestContext(request_id="c" * 32, operation="chat",
                                 scope={"method": "POST", "path": "/v1/chat/completions", "headers": []})
            tracer.begin(ctx)
            tracer.end(ctx)
        assert tracer.flush(10)
        assert sink.spans == 3 and sink.requests >= 1
        tracer.shutdown()
    finally:
        sink.stop()


def _result(ttft: float, rps: float) -> SimpleNamespace:
    return SimpleNamespace(ttft_p50_ms=ttft, throughput_rps=rps)


def test_on_off_ratios_are_taken_within_each_round():
    stacks = [SimpleNamespace(name="govllm"), SimpleNamespace(name="govllm-traced"),
              SimpleNamespace(name="direct")]
    rounds = [
        {"govllm": {"c1": _result(10, 1), "c16": _result(20, 50), "cpu_ms_per_request": 4.0},
         "govllm-traced": {"c1": _result(11, 1), "c16": _result(22, 45), "cpu_ms_per_request": 5.0}},
        {"govllm": {"c1": _result(20, 1), "c16": _result(40, 25), "cpu_ms_per_request": 8.0},
         "govllm-traced": {"c1": _result(21, 1), "c16": _result(40, 25), "cpu_ms_per_request": 8.0}},
    ]
    r = govllm_ratios(rounds, stacks)["govllm-traced"]
    assert r["base"] == "govllm" and len(r["per_round"]) == 2
    assert r["ttft_c1"] == (1.1 + 1.05) / 2 and r["throughput_c16"] == (0.9 + 1.0) / 2
    assert r["cpu"] == (1.25 + 1.0) / 2
    assert govllm_ratios(rounds, stacks[:1]) == {}


def test_the_in_process_bench_traces_only_its_on_variant():
    """loadtest/bench_tracing.py: one trace per request of the `on` variant, none otherwise
    (a sink that received nothing, or spans of the other variants, would void its ratios)."""
    from loadtest.bench_tracing import MODES, run

    result = run(requests=20, rounds=1)
    per_request, left = divmod(result["spans_exported"], 20 + 50)  # 50 warm-up requests
    # root, the steps (authenticate, priority, parse, resolve, policy, quota), dispatch,
    # admission, the two audit records and the attempt
    assert left == 0 and per_request == 12
    assert set(result) >= {*MODES, "off_vs_nohooks", "on_vs_nohooks"}
