"""The audit archive (S3) stopped during traffic: answers are not held up, nothing is lost, the
trail verifies once the archive is back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.conftest import WORKHORSE
from tests.faults.invariants import records_for
from tests.servers import paused

pytestmark = pytest.mark.faults


def test_archive_outage_loses_nothing(fault_stack, archive):
    ids = [f"archive-{i}" for i in range(24)]

    def ask(cid: str) -> tuple[int, str]:
        resp = httpx.post(
            fault_stack.base_url + "/v1/chat/completions", timeout=60,
            headers={"Authorization": f"Bearer {fault_stack.api_key}", "x-request-id": cid},
            json={"model": WORKHORSE, "max_tokens": 3, "messages": [{"role": "user", "content": cid}]},
        )
        return resp.status_code, resp.text[:200] if resp.status_code != 200 else ""

    with paused(archive["s3"].proc.pid):
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, ids))
    assert [status for status, _ in answers] == [200] * len(ids), answers
    records = records_for(fault_stack, "dev-local", set(ids), timeout_s=120)
    assert all(len(records[cid]) == 1 and records[cid][0]["status"] == 200 for cid in ids)
    code, report = fault_stack.audit_verify()
    assert report["problems"] == [], report["problems"]
