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


def test_pinning_moves_every_thread_of_a_real_process_tree_and_undoes_it():
    """`bench_stacks --pin`: real processes, titled as vLLM titles its engine processes, with
    several threads each (as the engine worker and every HTTP server have); every thread goes
    to its side, and unpinning gives each thread back exactly what it had."""
    import os
    import subprocess
    import sys
    import time

    from loadtest import pinning

    if len(os.sched_getaffinity(0)) < 2:
        import pytest

        pytest.skip("pinning needs 2 usable cores")
    layout = pinning.default_layout(os.sched_getaffinity(0))
    child = ("import setproctitle, sys, threading, time, subprocess\n"
             "title = sys.argv[1]\n"
             "setproctitle.setproctitle(title) if title else None\n"
             "[threading.Thread(target=time.sleep, args=(60,), daemon=True).start() for _ in range(3)]\n"
             "if len(sys.argv) > 2: subprocess.Popen([sys.executable, '-c', sys.argv[2], 'VLLM::Worker'])\n"
             "time.sleep(60)\n")
    root = subprocess.Popen([sys.executable, "-c", child, "", child])  # an HTTP side parent
    try:
        deadline = time.monotonic() + 20
        pinner = pinning.TreePinner(root.pid, layout)
        while time.monotonic() < deadline:
            procs = pinner._processes()
            if len(procs) == 2 and any(pinning.is_engine_process(c) for _, c in procs) \
                    and all(len(os.listdir(f"/proc/{p}/task")) >= 4 for p, _ in procs):
                break
            time.sleep(0.2)
        before = {int(t): os.sched_getaffinity(int(t)) for p, _ in procs for t in os.listdir(f"/proc/{p}/task")}
        counts = pinner.pin()
        assert counts["engine"] >= 4 and counts["http"] >= 4
        for pid, cmd in procs:
            want = layout.engine if pinning.is_engine_process(cmd) else layout.http
            assert all(os.sched_getaffinity(int(t)) == want for t in os.listdir(f"/proc/{pid}/task"))
        pinner.unpin()
        assert {t: os.sched_getaffinity(t) for t in before} == before
    finally:
        for p in pinning.TreePinner(root.pid, layout)._processes()[::-1]:
            os.kill(p[0], 9)
        root.wait()
