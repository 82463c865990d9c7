"""What the audit records of a request hold, captured cheaply and completed on the writer thread.

A request that reaches an engine leaves two records: a *begin* record,
durable before the prompt is dispatched (who asked what, under which
policy), and an *end* record when it finishes (outcome, model actually
used, usage, timings, the answer). A router killed mid-stream therefore
still leaves the request on the trail, visible as a begin without an end.
A request refused before dispatch leaves one complete *request* record
(both halves in one).

Capture runs on the request path, so it only takes references (the parsed
payload, the raw body, the forwarded response bytes); `finish()` derives the
prompt, the parameters and the assembled answer on the writer thread. Keys
starting with "_" are that raw material and never reach the trail.
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any

from serving.audit.assemble import assemble_body, assemble_stream
from serving.config.vendor import safe_url
from serving.texts import INPUT_FIELDS, recorded_input

if TYPE_CHECKING:
    from serving.request import RequestContext

RECORD_VERSION = 2
_MISSING = object()


def _who_and_what(ctx: RequestContext) -> dict[str, Any]:
    principal = ctx.principal
    return {
        "version": RECORD_VERSION,
        "request_id": ctx.request_id,
        "client_request_id": ctx.client_request_id,
        "time": ctx.wall_time,
        "tenant": principal.tenant if principal else None,
        "user": principal.user if principal else None,
        "auth_method": principal.method if principal else None,
        "credential_id": principal.credential_id if principal else None,
        "operation": ctx.operation,
        "requested_model": ctx.requested_model,
        "confidentiality": ctx.confidentiality,
        "usage_type": ctx.usage_type or (ctx.tenant.usage_type if ctx.tenant else None),
        "client": ctx.client,
        "stream": ctx.stream,
        "pii": ctx.pii,  # the guard's decision, types and counts (serving/pii)
        "training_use": "prohibited",
        "_candidates": ctx.candidates,
        "_payload": ctx.payload,
        "_raw_body": ctx.raw_body,
    }


def _vendor_terms(model) -> dict[str, Any] | None:
    """The contract's data-use terms, on every record of a vendor-hosted model."""
    if model is None or model.endpoint is None:
        return None
    return {"endpoint": safe_url(model.endpoint.base_url), **model.endpoint.terms.model_dump(mode="json")}


def _cost(model, usage: dict | None) -> float | None:
    if model is None or model.price is None or not usage:
        return None
    return round(model.price.cost_yen(int(usage.get("prompt_tokens") or 0),
                                      int(usage.get("completion_tokens") or 0)), 6)


def _outcome(ctx: RequestContext) -> dict[str, Any]:
    now = time.perf_counter()
    model = ctx.model
    return {
        "status": ctx.status,
        "error_code": ctx.error_code,
        "model_id": model.id if model else None,
        "model_revision": model.revision if model else None,
        "upstream": ctx.upstream,
        "vendor": _vendor_terms(model),
        "attempts": list(ctx.attempts),
        "pii_output": dict(ctx.output_filter.counts) if ctx.output_filter is not None else None,
        "usage": dict(ctx.usage) if ctx.usage else ctx.usage,
        "usage_estimated": ctx.usage_estimated,
        "cost_yen": _cost(model, ctx.usage),
        "timings_ms": {
            "first_byte": round(1000 * (ctx.first_byte_at - ctx.started_at), 3) if ctx.first_byte_at else None,
            "total": round(1000 * (now - ctx.started_at), 3),
        },
        # a snapshot of the list: a cancelled relay may still hold a reference to it
        "_response": (tuple(ctx.response_chunks), ctx.response_body),
    }


def capture_begin(ctx: RequestContext) -> dict[str, Any]:
    """The begin record: who asks what, made durable before the prompt goes to an engine."""
    record = _who_and_what(ctx)
    record["type"] = "begin"
    return record


def capture_end(ctx: RequestContext) -> dict[str, Any]:
    """The end record of a begun request: its outcome and the answer as forwarded."""
    principal = ctx.principal
    return {
        "version": RECORD_VERSION,
        "type": "end",
        "request_id": ctx.request_id,
        "time": time.time(),
        "tenant": principal.tenant if principal else None,
        "operation": ctx.operation,
        "training_use": "prohibited",
        **_outcome(ctx),
    }


def capture_request(ctx: RequestContext) -> dict[str, Any]:
    """The single complete record of a request that never began (refused before dispatch)."""
    record = _who_and_what(ctx)
    record["type"] = "request"
    record["end_time"] = time.time()
    record.update(_outcome(ctx))
    return record


def finish(record: dict[str, Any]) -> dict[str, Any]:
    """Derive prompt, parameters and output from the raw material (runs on the writer thread)."""
    record.pop("_raw_body", None)
    candidates = record.pop("_candidates", _MISSING)
    if candidates is not _MISSING:
        record["candidates"] = [m.id for m in candidates or ()]
    payload = record.pop("_payload", _MISSING)
    if payload is not _MISSING:
        payload = payload if isinstance(payload, dict) else {}
        operation = record.get("operation") or "completions"
        record["prompt"] = recorded_input(operation, payload)
        inputs = INPUT_FIELDS.get(operation, ("prompt",))
        record["parameters"] = {k: v for k, v in payload.items() if k not in ("messages", "prompt", *inputs)}
    response = record.pop("_response", _MISSING)
    if response is not _MISSING and "output" not in record:
        chunks, body = response
        output, errors = None, []
        if chunks:
            output, errors = assemble_stream(b"".join(chunks), record.get("operation"))
        elif body:
            output, errors = assemble_body(body, record.get("operation"))
        record["output"] = output
        record["output_errors"] = errors or None
    return record


def raw_material(record: dict[str, Any]) -> dict[str, str]:
    """The request and response bytes of a record, for a substitute that must stay lossless."""
    out = {}
    body = record.get("_raw_body")
    if isinstance(body, bytes | bytearray | memoryview) and body:
        out["raw_body_b64"] = base64.b64encode(bytes(body)).decode()
    try:
        chunks, answer = record.get("_response") or ((), None)
        data = b"".join(chunks) if chunks else bytes(answer or b"")
    except (TypeError, ValueError):
        data = b""
    if record.get("operation") == "embeddings":
        data = b""  # the trail keeps the input and the model, never the vectors
    if data:
        out["response_b64"] = base64.b64encode(data).decode()
    return out


def feedback_record(*, request_id: str, tenant: str, user: str, model_id: str, rating: int,
                    comment: str | None, feedback_id: str) -> dict[str, Any]:
    return {
        "version": RECORD_VERSION,
        "type": "feedback",
        "request_id": feedback_id,
        "rated_request_id": request_id,
        "time": time.time(),
        "tenant": tenant,
        "user": user,
        "model_id": model_id,
        "rating": rating,
        "comment": comment,
        "training_use": "prohibited",
        "output": None,
    }
