"""The audit spool's disk full: no prompt reaches an engine unrecorded, service resumes when space
returns, and the trail still verifies."""

from __future__ import annotations

import errno
import os
import time

import httpx
import pytest

from tests.faults.clients import stream, wait_until
from tests.faults.conftest import WORKHORSE
from tests.faults.invariants import records_for

pytestmark = pytest.mark.faults

GENERATED = "vllm:generation_tokens_total"


def _fill(path) -> int:
    """Take every free byte of the spool's filesystem (large blocks first, then smaller ones)."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    written = 0
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
            block = b"\0" * size
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return written


def test_full_spool_refuses_before_dispatch_and_recovers(fault_stack):
    if not fault_stack.spool_tmpfs:
        pytest.skip("the audit spool is not on a tmpfs this test can fill (mounting one needs root)")
    auth = {"Authorization": f"Bearer {fault_stack.api_key}"}
    ask = {"model": WORKHORSE, "max_tokens": 4, "messages": [{"role": "user", "content": "満杯"}]}
    before = fault_stack.engine_metric(WORKHORSE, GENERATED)
    assert _fill(fault_stack.spool_dir) > 0
    time.sleep(2 * fault_stack.spec["audit"]["batch_max_s"] + 1)  # the open segments rotate: no room left
    try:
        refused = [httpx.post(fault_stack.base_url + "/v1/chat/completions", json=ask, timeout=30,
                              headers={**auth, "x-request-id": f"full-{i}"}) for i in range(4)]
        streamed = stream(fault_stack.port, ask, {**auth, "x-request-id": "full-stream"})
        assert [r.status_code for r in refused] == [503] * 4
        assert {r.json()["error"]["code"] for r in refused} == {"audit_unavailable"}
        assert streamed.status == 503 and streamed.error_code == "audit_unavailable" and not streamed.events
        assert fault_stack.engine_metric(WORKHORSE, GENERATED) == before, "an unrecorded prompt ran"
    finally:
        (fault_stack.spool_dir / "filler").unlink()
    wait_until(lambda: httpx.post(fault_stack.base_url + "/v1/chat/completions", json=ask, timeout=30,
                                  headers={**auth, "x-request-id": "full-after"}).status_code == 200,
               timeout_s=30, what="served again once the disk has space")
    records_for(fault_stack, "dev-local", {"full-after"}, timeout_s=60)
    code, report = fault_stack.audit_verify()
    assert report["problems"] == [], report["problems"]
