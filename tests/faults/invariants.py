"""The promises the fault suite checks after each fault, read from the real trail, ledger and engines."""

from __future__ import annotations

from collections import defaultdict

from tests.faults.clients import store, wait_until


def records_for(stack, tenant: str, client_ids: set[str], *, timeout_s: float = 90) -> dict[str, list[dict]]:
    """The exported (begin and end merged) audit records of these client request ids, once all are closed.

    Returns every record per id, so callers can check there is exactly one.
    """
    progress = {}

    def ready():
        found: dict[str, list[dict]] = defaultdict(list)
        for record in stack.audit_export(tenant):
            cid = record.get("client_request_id")
            if cid in client_ids:
                found[cid].append(record)
        missing = sorted(client_ids - set(found))
        still_open = sorted(cid for cid, rs in found.items() if not all(r.get("closed", True) for r in rs))
        progress.update(missing=missing[:5], missing_count=len(missing), open=still_open[:5])
        if not missing and not still_open:
            return found
        return None

    try:
        return wait_until(ready, timeout_s=timeout_s, interval_s=3,
                          what=f"audit records of {len(client_ids)} requests")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {progress}") from None


def ledger_tokens(stack, tenant: str) -> int:
    return int(stack.usage(tenant).get("total_tokens") or 0)


def open_reservations(stack, tenant: str) -> int:
    """Budget reservations the tenant still holds in the shared store."""
    r = store(stack)
    total = 0
    for key in r.scan_iter(match=f"*{{{tenant}}}*reserv*"):
        total += r.zcard(key)
    return total


def engine_idle(stack, model: str, timeout_s: float = 30) -> None:
    """The engine runs nothing any more (every aborted request really stopped)."""
    wait_until(lambda: stack.engine_metric(model, "vllm:num_requests_running") == 0,
               timeout_s=timeout_s, what=f"{model} idle")


def ledger_reaches(stack, tenant: str, expected: int, *, timeout_s: float = 30) -> None:
    """Settlement runs after the response: poll until the ledger shows `expected` tokens (or fail)."""
    wait_until(lambda: ledger_tokens(stack, tenant) == expected, timeout_s=timeout_s, interval_s=1,
               what=f"{tenant} ledger at {expected} tokens")
