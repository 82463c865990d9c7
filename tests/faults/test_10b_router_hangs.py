"""A router replica that stops answering (SIGSTOP): HAProxy's health checks take it out within
seconds, new requests go to the other router, and the requests it held finish once it resumes."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.faults.conftest import WORKHORSE

pytestmark = pytest.mark.faults

HOLD_S = 8.0


def test_hung_router_leaves_rotation_and_loses_nothing(fault_stack):
    routers = fault_stack.replica_pids("router")
    assert len(routers) == 2
    outcomes, stop = [], threading.Event()

    def traffic(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                sent = time.monotonic()
                resp = client.post(fault_stack.base_url + "/v1/chat/completions",
                                   headers={"Authorization": f"Bearer {fault_stack.api_key}"},
                                   json={"model": WORKHORSE, "max_tokens": 2,
                                         "messages": [{"role": "user", "content": f"停止 {i}"}]})
                outcomes.append((sent, time.monotonic() - sent, resp.status_code,
                                 resp.text[:200] if resp.status_code != 200 else ""))
                time.sleep(0.1)

    os.kill(routers[0], signal.SIGSTOP)
    stopped = time.monotonic()
    workers = [threading.Thread(target=traffic, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(HOLD_S)
    finally:
        os.kill(routers[0], signal.SIGCONT)
    stop.set()
    for w in workers:
        w.join(90)
    failed = [(round(sent - stopped, 2), round(took, 2), status, text)
              for sent, took, status, text in outcomes if status != 200]
    assert outcomes and not failed, failed
    slow = [sent - stopped for sent, took, _, _ in outcomes if took > 1.0]
    out_of_rotation = max(slow, default=0.0)
    late = [took for sent, took, _, _ in outcomes if sent - stopped > 4.0]
    assert late and max(late) < 1.0, late  # new requests no longer reach the stopped router
    print(f"\nrouter SIGSTOP: {len(slow)} requests waited for it (sent up to {out_of_rotation:.1f} s after "
          f"the stop, answered after SIGCONT); later ones went to the other router")
    assert fault_stack.replica_pids("router") == routers  # it resumed; nothing restarted it
