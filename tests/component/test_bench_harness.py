"""The tenancy benchmark must exercise what it claims to measure.

Its first version never settled a request (the dispatcher, not a step, picks the model), so
reservations piled up and the figure grew with the run length. These checks keep it honest:
the full profile runs every tenancy step and a real settlement round trip to Redis, the bare
one runs none of them.
"""

from loadtest.bench_tenancy import run


def test_full_profile_runs_every_step_of_the_router_and_settles():
    result = run(60)
    # the router's own steps (build_request_path), never a copy of them
    assert set(result["full_steps_p50_us"]) == set(result["router_steps"]) | {"AuditBegin"}
    assert {"Authenticate", "ParseRequest", "ResolveModel", "ConfidentialityPolicy",
            "QuotaLedger"} <= set(result["router_steps"])
    # a settlement is a Redis round trip; an early return (nothing settled) takes ~1 µs
    assert result["settle_p50_us"] > 20
    # both audit records are written and fsynced
    assert result["audit_begin_p50_us"] > 20 and result["audit_end_p50_us"] > 20
    assert result["pre_dispatch_p50_us"]["full"] > result["pre_dispatch_p50_us"]["bare"]
