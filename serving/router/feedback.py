"""POST /v1/feedback: a user's rating of one answer, for comparing the models.

Body: {"request_id": "...", "rating": 1 | -1, "comment": "..." (optional)}.
Only the tenant that made the request may rate it (another tenant gets the
same 404 as for an unknown id, so request ids of other tenants cannot be
probed). The rating is written to the audit trail and counted per model in
the shared store and in metrics; `govllm feedback summary` prints the counts.
"""

from __future__ import annotations

import json
import uuid

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from serving.audit.record import feedback_record
from serving.router.errors import APIError
from serving.router.pipeline import RequestContext
from serving.router.schema import validate_model

MAX_COMMENT = 2000


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    rating: StrictInt = Field(description="+1 or -1")
    comment: str | None = Field(default=None, max_length=MAX_COMMENT)


class FeedbackEndpoint:
    def __init__(self, client, keys, *, audit=None, metrics=None):
        self._r = client
        self._k = keys
        self._audit = audit
        self._metrics = metrics

    async def __call__(self, ctx: RequestContext) -> dict:
        try:
            payload = json.loads(ctx.raw_body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(400, f"Request body is not valid JSON: {exc}.", code="invalid_json") from None
        req = validate_model(FeedbackRequest, payload)
        if req.rating not in (1, -1):
            raise APIError(400, "rating must be 1 (good) or -1 (bad).", code="invalid_value", param="rating")
        try:
            owner = await self._r.get(self._k.request(req.request_id))
        except Exception as exc:
            raise APIError(503, "The feedback store is unreachable; retry shortly.",
                           code="feedback_store_unavailable", headers={"Retry-After": "5"}) from exc
        tenant, _, model = (owner or b"").decode().partition("|")
        if not owner or tenant != ctx.tenant.id:
            raise APIError(404, f"No request '{req.request_id}' of your tenant is known.",
                           code="request_not_found", param="request_id")
        feedback_id = f"fb-{uuid.uuid4().hex}"
        if self._audit is not None:
            await self._audit.record(feedback_record(
                request_id=req.request_id, tenant=tenant, user=ctx.principal.user, model_id=model,
                rating=req.rating, comment=req.comment, feedback_id=feedback_id,
            ))
        await self._r.hincrby(self._k.feedback(model), "up" if req.rating > 0 else "down", 1)
        if self._metrics is not None:
            self._metrics.feedback(model, req.rating)
        return {"id": feedback_id, "object": "feedback", "request_id": req.request_id,
                "model": model, "rating": req.rating}
