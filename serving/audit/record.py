"""What one audit record holds, and how a streamed answer is assembled into it.

The router captures raw material on the request path (the parsed request,
the response bytes as they were forwarded) and defers all parsing to the
audit writer thread: assembling a streamed answer means decoding every SSE
event, which must not cost the token stream anything.
"""

from __future__ import annotations

import json
import time
from typing import Any

from serving.router.pipeline import RequestContext

RECORD_VERSION = 1


def capture(ctx: RequestContext) -> dict[str, Any]:
    """The record's fields as known when the request ends (cheap: references, no parsing)."""
    now = time.perf_counter()
    principal = ctx.principal
    payload = ctx.payload or {}
    return {
        "version": RECORD_VERSION,
        "type": "request",
        "request_id": ctx.request_id,
        "time": ctx.wall_time,
        "tenant": principal.tenant if principal else None,
        "user": principal.user if principal else None,
        "auth_method": principal.method if principal else None,
        "credential_id": principal.credential_id if principal else None,
        "operation": ctx.operation,
        "requested_model": ctx.requested_model,
        "model_id": ctx.model.id if ctx.model else None,
        "model_revision": ctx.model.revision if ctx.model else None,
        "confidentiality": ctx.confidentiality,
        "usage_type": ctx.usage_type or (ctx.tenant.usage_type if ctx.tenant else None),
        "status": ctx.status,
        "error_code": ctx.error_code,
        "client": ctx.client,
        "timings_ms": {
            "first_byte": round(1000 * (ctx.first_byte_at - ctx.started_at), 3) if ctx.first_byte_at else None,
            "total": round(1000 * (now - ctx.started_at), 3),
        },
        "usage": ctx.usage,
        "stream": ctx.stream,
        "prompt": payload.get("messages") if ctx.operation == "chat" else payload.get("prompt"),
        "parameters": {k: v for k, v in payload.items() if k not in ("messages", "prompt")},
        "training_use": "prohibited",
        # raw material, replaced by "output" in finish()
        "_response": (ctx.response_chunks, ctx.response_body),
    }


def finish(record: dict[str, Any]) -> dict[str, Any]:
    """Turn captured response bytes into the assembled output (runs on the writer thread)."""
    chunks, body = record.pop("_response", (None, None))
    if "output" in record:
        return record
    if chunks:
        record["output"] = assemble_stream(b"".join(chunks), record.get("operation"))
    elif body:
        record["output"] = assemble_body(body, record.get("operation"))
    else:
        record["output"] = None
    return record


def _texts(choices: list[dict], operation: str | None) -> list[dict]:
    out = []
    for c in choices:
        if operation == "chat":
            msg = c.get("message") or {}
            out.append({"index": c.get("index", 0), "text": msg.get("content") or "",
                        "tool_calls": msg.get("tool_calls"), "finish_reason": c.get("finish_reason")})
        else:
            out.append({"index": c.get("index", 0), "text": c.get("text") or "",
                        "finish_reason": c.get("finish_reason")})
    return out


def assemble_body(body: bytes, operation: str | None) -> list[dict] | None:
    try:
        return _texts(json.loads(body).get("choices") or [], operation)
    except (ValueError, AttributeError):
        return [{"index": 0, "text": body.decode("utf-8", "replace"), "finish_reason": None}]


def assemble_stream(raw: bytes, operation: str | None) -> list[dict]:
    """Concatenate the deltas of every choice of an SSE stream."""
    texts: dict[int, list[str]] = {}
    finish_reasons: dict[int, str | None] = {}
    for event in raw.split(b"\n\n"):
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            continue
        try:
            chunk = json.loads(event[6:])
        except ValueError:
            continue
        for c in chunk.get("choices") or []:
            i = c.get("index", 0)
            piece = (c.get("delta") or {}).get("content") if operation == "chat" else c.get("text")
            texts.setdefault(i, []).append(piece or "")
            if c.get("finish_reason"):
                finish_reasons[i] = c["finish_reason"]
    return [
        {"index": i, "text": "".join(parts), "finish_reason": finish_reasons.get(i)}
        for i, parts in sorted(texts.items())
    ]


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
