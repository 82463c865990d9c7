"""loadtest/bench_fairness.py's counting window and share arithmetic (no stack)."""

from __future__ import annotations

from loadtest.bench_fairness import in_window, summarise


def test_only_requests_sent_after_the_start_burst_and_answered_in_the_phase_count():
    assert in_window({"sent": 106.0, "at": 139.0}, 105.0, 140.0)
    assert not in_window({"sent": 100.5, "at": 101.0}, 105.0, 140.0)  # the start burst
    assert not in_window({"sent": 139.0, "at": 142.0}, 105.0, 140.0)  # locust's drain after the end


def _tenant(served: int, p90: float = 100.0) -> dict:
    return {"served": served, "refused": 0, "failed": 0, "pushed_out": 0, "ttft_p50_ms": p90 / 2,
            "ttft_p90_ms": p90}


def test_shares_and_the_quiet_ratio_are_per_round_then_the_median():
    rounds = [{"alone": {"quiet": _tenant(40, 50)}, "flood": {"quiet": _tenant(40, 60), "flood": _tenant(300)},
               "equal": {"quiet": _tenant(100), "flood": _tenant(100)},
               "weighted": {"heavy": _tenant(200), "flood": _tenant(100)}},
              {"alone": {"quiet": _tenant(40, 50)}, "flood": {"quiet": _tenant(40, 100), "flood": _tenant(300)},
               "equal": {"quiet": _tenant(90), "flood": _tenant(110)},
               "weighted": {"heavy": _tenant(180), "flood": _tenant(120)}}]
    s = summarise(rounds)
    assert s["quiet_ttft_p90_ratios"] == [1.2, 2.0] and abs(s["quiet_ttft_p90_ratio"] - 1.6) < 1e-9
    assert abs(s["shares"]["weighted"]["heavy"] - (2 / 3 + 0.6) / 2) < 1e-9
    assert abs(s["weight_share"]["weighted"]["heavy"] - 2 / 3) < 1e-9
    assert abs(s["shares"]["equal"]["quiet"] - 0.475) < 1e-9
