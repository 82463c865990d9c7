"""loadtest/bench_prefix.py's arithmetic and the RAG scenario's documents (no stack)."""

from __future__ import annotations

import argparse

from loadtest.bench_prefix import POLICIES, render, summarise
from loadtest.llmload import prompts


def _row(ttft: float, rps: float, hit: float) -> dict:
    return {"ttft_p50_ms": ttft, "ttft_p90_ms": 2 * ttft, "e2e_p50_ms": 3 * ttft, "throughput_rps": rps,
            "requests": 10, "errors": 0, "cache_hit_rate": hit, "replica_query_share": [0.5, 0.5]}


def test_ratios_are_within_each_round_then_the_median():
    rounds = [
        {"prefix_affinity": _row(40, 6, 0.8), "least_loaded": _row(90, 4, 0.6), "round_robin": _row(100, 4, 0.6)},
        {"prefix_affinity": _row(120, 5, 0.8), "least_loaded": _row(200, 5, 0.6), "round_robin": _row(200, 5, 0.6)},
    ]
    s = summarise(rounds)
    assert s["prefix_affinity"]["ttft_p50_vs_rr_rounds"] == [0.4, 0.6]
    assert abs(s["prefix_affinity"]["ttft_p50_vs_rr"] - 0.5) < 1e-9
    assert abs(s["prefix_affinity"]["throughput_vs_rr"] - 1.25) < 1e-9
    assert s["round_robin"]["ttft_p50_vs_rr"] == 1.0 and s["prefix_affinity"]["requests"] == 20
    args = argparse.Namespace(rounds=2, seconds=40, users=8, documents=8, context_tokens=1500,
                              output_tokens=16, think="0-0.5")
    text = render(s, args, "now", 70)
    assert "Goal" in text and ": met." in text and all(p in text for p in POLICIES)
    rounds[0]["prefix_affinity"]["throughput_rps"] = 3  # slower than round robin: goal missed
    rounds[1]["prefix_affinity"]["throughput_rps"] = 3
    assert "MISSED" in render(summarise(rounds), args, "now", 70)


def test_rag_documents_differ_early_and_are_stable():
    docs = [prompts.rag_context(2000, d) for d in range(4)]
    assert docs[0] == prompts.rag_context(2000) == prompts.rag_context(2000, 0)
    assert docs[2] == prompts.rag_context(2000, 2)
    instruction = prompts.prompt_set()["rag"]["instruction"]
    assert all(d.startswith(instruction) for d in docs)
    # distinct within the router's prefix key (512 characters), right after the instruction
    heads = {d[: len(instruction) + 40] for d in docs}
    assert len(heads) == 4
