"""One logical record per request, as auditors read them: a begin merged with its end.

On the trail a dispatched request is two records (see record.py); an export
gives the shape of a complete `request` record for both kinds, plus
`closed`: false where the begin has no end (the router died mid-request, or
the end is not uploaded yet). Feedback and other records pass unchanged.
"""

from __future__ import annotations

from typing import Any

#: Fields only an end record carries; null in the export of an unclosed request.
END_FIELDS = ("status", "error_code", "model_id", "model_revision", "upstream", "attempts",
              "usage", "timings_ms", "output", "output_errors")
_CHAIN_FIELDS = ("version", "type", "request_id", "tenant", "operation", "training_use", "time",
                 "chain", "seq", "prev_digest")
_SUBSTITUTE_FIELDS = ("encoding_error", "dropped_fields")


def merge_requests(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Begin + end -> one `request` record with `closed`; complete records get `closed: true`."""
    ends = {r["request_id"]: r for r in records if r.get("type") == "end" and "request_id" in r}
    out: list[dict[str, Any]] = []
    for record in records:
        kind = record.get("type")
        if kind == "begin":
            out.append(_merge(record, ends.get(record.get("request_id"))))
        elif kind == "request":
            out.append({**record, "closed": True})
        elif kind != "end":  # ends are merged into their begins; an end without one was begun earlier
            out.append(record)
    return out


def _merge(begin: dict[str, Any], end: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**begin, **dict.fromkeys(END_FIELDS), "type": "request", "end_time": None,
              "closed": end is not None}
    if end is None:
        return merged
    for key, value in end.items():
        if key in _SUBSTITUTE_FIELDS:
            merged[f"end_{key}"] = value
        elif key not in _CHAIN_FIELDS:
            merged[key] = value
    merged["end_time"] = end.get("time")
    merged["end_seq"] = end.get("seq")
    return merged
