"""The `make bench` harness's own logic: the pinned layout and the side-by-side ratios.

The measurements themselves need running stacks (tests/component/test_bench_harness.py and
`make bench`); what is checked here is what turns them into claims: which process goes to
which core, which measurement is compared with which (never a pinned one with an unpinned
one), and the router-capacity verdict.
"""

from __future__ import annotations

import argparse

import pytest

from loadtest import bench_stacks as bs
from loadtest import pinning
from loadtest.serving_bench import BenchResult, RequestTiming


def test_layout_keeps_the_engine_on_the_first_core_and_gives_the_rest_to_http():
    layout = pinning.default_layout([1, 0])
    assert layout.engine == {0} and layout.http == {1}
    assert layout.omp_threads_bind == "0"  # what vLLM's `auto` picks on one NUMA node
    assert pinning.default_layout(range(4)).http == {1, 2, 3}
    with pytest.raises(ValueError, match="at least 2"):
        pinning.default_layout([0])
    with pytest.raises(ValueError, match="disjoint"):
        pinning.PinLayout(frozenset({0}), frozenset({0, 1}))


def test_only_vllms_engine_processes_go_to_the_engine_core():
    layout = pinning.default_layout([0, 1])
    planned = pinning.plan([
        (10, ["VLLM::EngineCore"]), (11, ["VLLM::Worker_TP0"]), (12, ["VLLM::Worker"]),
        (20, ["python", "-m", "vllm.entrypoints.openai.api_server"]),  # the API server: HTTP
        (21, ["ray::ServeReplica:govllm:router"]), (22, ["haproxy", "-f", "x.cfg"]),
        (23, []),  # a zombie has no command line: HTTP side, never the engine's core
        (24, ["/bin/sh", "-c", "echo VLLM::Worker"]),
    ], layout)
    assert {pid for pid, cores in planned.items() if cores == layout.engine} == {10, 11, 12}
    assert all(planned[p] == layout.http for p in (20, 21, 22, 23, 24))


def _result(ttft_ms: float, latency_ms: float, rps: float, n: int = 4) -> BenchResult:
    timings = [RequestTiming(ttft_ms / 1000, latency_ms / 1000, 32) for _ in range(n)]
    return BenchResult("x", 16, n, wall_s=n / rps, timings=timings)


def _measurement(ttft_c1, ttft_c16, rps, cpu=10.0, vb=None) -> dict:
    out = {"c1": _result(ttft_c1, ttft_c1 + 50, 1.0), "c16": _result(ttft_c16, ttft_c16 + 100, rps),
           "cpu_ms_per_request": cpu}
    if vb:
        out["vllm_bench"] = {"throughput_rps": vb[0], "ttft_p50_ms": vb[1], "e2el_p50_ms": 100.0,
                             "failed": 0}
    return out


def _stacks() -> list[bs.Stack]:
    return [bs.Stack("direct", "(a) direct", []), bs.Stack("stock-direct", "(b2) stock direct", []),
            bs.Stack("govllm", "(c) govllm", [], api_key_file=None),
            bs.Stack("govllm-dp", "(d) data plane", [], view_of="govllm")]


def _rounds() -> list[dict]:
    # unpinned: the router costs 20% of throughput and 5 ms; pinned: 2% and 1 ms
    return [
        {"direct": _measurement(10, 50, 50), "govllm": _measurement(15, 60, 40, vb=(39, 61)),
         "govllm-dp": _measurement(10, 55, 50, vb=(50, 55)), "stock-direct": _measurement(12, 58, 44),
         "direct+pin": _measurement(8, 40, 60), "govllm+pin": _measurement(9, 41, 58.8, vb=(58, 41.5)),
         "govllm-dp+pin": _measurement(8, 40, 60, vb=(60, 40)), "stock-direct+pin": _measurement(8.5, 42, 59)},
    ] * 3


def test_each_measurement_is_compared_with_the_same_pin_mode_only():
    summary = bs.summarise(_rounds(), _stacks())
    assert summary["stacks"]["govllm+pin"]["label"] == "(c) govllm [pinned]"
    assert summary["ratios"]["govllm"]["throughput_c16_vs_direct"] == pytest.approx(0.8)
    assert summary["ratios"]["govllm+pin"]["throughput_c16_vs_direct"] == pytest.approx(0.98)
    assert "direct" not in summary["ratios"] and "direct+pin" not in summary["ratios"]
    # the data plane is a view on the govllm stack, not another govllm version
    assert summary["vs_govllm"] == {}


def test_router_capacity_goal_against_the_same_engines_data_plane():
    rows = {(r["a"], r["b"]): r for r in bs.summarise(_rounds(), _stacks())["capacity"]}
    unpinned, pinned = rows[("govllm", "govllm-dp")], rows[("govllm+pin", "govllm-dp+pin")]
    assert unpinned["throughput_c16"] == pytest.approx(0.8) and unpinned["ttft_c1_ms"] == pytest.approx(5)
    assert unpinned["vb_throughput_c16"] == pytest.approx(0.78) and not unpinned["meets_goal"]
    assert pinned["throughput_c16"] == pytest.approx(0.98) and pinned["ttft_c16_ms"] == pytest.approx(1)
    assert pinned["meets_goal"]
    # the alternative a user would pick, and vLLM alone, are reported beside it without a goal
    assert rows[("govllm+pin", "stock-direct+pin")]["throughput_c16"] == pytest.approx(58.8 / 59)
    assert "meets_goal" not in rows[("govllm", "direct")]


def test_a_slower_vllm_bench_figure_alone_fails_the_goal():
    """Both clients must agree: this harness's figures within the goal but vllm bench's not."""
    res = {"throughput_c16": 0.99, "ttft_c1_ms": 0.5, "ttft_c16_ms": 0.5,
           "vb_throughput_c16": 0.90, "vb_ttft_c16_ms": 0.5}
    assert not bs.meets_capacity_goal(res)
    assert bs.meets_capacity_goal({**res, "vb_throughput_c16": 0.96})
    assert not bs.meets_capacity_goal({**res, "vb_throughput_c16": 0.96, "ttft_c16_ms": 2.5})


def test_the_report_names_both_modes_and_the_verdict():
    summary = bs.summarise(_rounds(), _stacks())
    for s in summary["stacks"].values():
        s["idle_cpu_pct"] = 5.0
    args = argparse.Namespace(rounds=3, sequential=24, requests=160, pin="both", vllm_bench=True,
                              layout=pinning.default_layout([0, 1]))
    text = bs.render_markdown(summary, args, "now")
    assert "VLLM_CPU_OMP_THREADS_BIND=0" in text and "(c) govllm [pinned]" in text
    assert "| (d) data plane [pinned] | 0.98x |" in text and "| met |" in text and "| not met |" in text
    assert "vllm bench serve" in text
