"""The audit spool's disk full: no prompt reaches an engine unrecorded, service resumes when space
returns, and the trail still verifies."""

from __future__ import annotations

import errno

import httpx
import pytest

from tests.faults.clients import stream, wait_until
from tests.faults.conftest import WORKHORSE
from tests.faults.invariants import records_for

pytestmark = pytest.mark.faults

GENERATED = "vllm:generation_tokens_total"


def _fill(path) -> int:
    filler = path / "filler"
    written = 0
    with open(filler, "wb") as f:
        block = b"\0" * (1 << 20)
        while True:
            try:
                f.write(block)
                f.flush()
                written += len(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return written


def test_full_spool_refuses_before_dispatch_and_recovers(fault_stack):
    if not fault_stack.spool_tmpfs:
        pytest.skip("the audit spool is not on a tmpfs this test can fill (mounting one needs root)")
    auth = {"Authorization": f"Bearer {fault_stack.api_key}"}
    ask = {"model": WORKHORSE, "max_tokens": 4, "messages": [{"role": "user", "content": "満杯"}]}
    before = fault_stack.engine_metric(WORKHORSE, GENERATED)
    assert _fill(fault_stack.spool_dir) > 0
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
