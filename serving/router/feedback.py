"""POST /v1/feedback: a user's rating of one answer, for comparing the models.

Body: {"request_id": "...", "rating": 1 | -1, "comment": "..." (optional)}.

The request is looked up under the caller's tenant only (`req:{tenant}:<id>`,
written when the request was settled), so another tenant's request id gets
the same 404 as an unknown one and ids of other tenants cannot be probed.
Each user rates a request once: the claim is one atomic script on that key
(a second rating answers 409 `feedback_already_given`), so two replicas
racing with the same rating count it once. The rating is written to the
audit trail and counted per model in the shared store and in metrics;
`govllm feedback summary` prints the counts.
"""

from __future__ import annotations

import logging
import uuid

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from serving.audit.record import feedback_record
from serving.request import APIError, RequestContext
from serving.router.json_body import parse_object
from serving.router.schema import validate_model
from serving.store import StoreKeyspace

MAX_COMMENT = 2000

logger = logging.getLogger("govllm.feedback")

# KEYS[1]: the request index. ARGV: the user's field, the rating.
# Returns the model id, 0 (unknown request) or 1 (this user already rated it).
_CLAIM = """
local model = redis.call('HGET', KEYS[1], 'model')
if not model then return 0 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 1 end
return model
"""


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    rating: StrictInt = Field(description="+1 or -1")
    comment: str | None = Field(default=None, max_length=MAX_COMMENT)


def _store_down() -> APIError:
    return APIError(503, "The feedback store is unreachable; retry shortly.",
                    code="feedback_store_unavailable", headers={"Retry-After": "5"})


class FeedbackEndpoint:
    """The /v1/feedback handler: needs an authenticated ctx (principal and tenant set)."""

    def __init__(self, client, keys: StoreKeyspace, *, audit=None, metrics=None):
        self._r = client
        self._k = keys
        self._claim = client.register_script(_CLAIM)
        self._audit = audit
        self._metrics = metrics

    async def __call__(self, ctx: RequestContext) -> dict:
        payload = parse_object(ctx.raw_body or b"null")
        req = validate_model(FeedbackRequest, payload)
        if req.rating not in (1, -1):
            raise APIError(400, "rating must be 1 (good) or -1 (bad).", code="invalid_value", param="rating")
        tenant, user = ctx.tenant.id, ctx.principal.user
        index = self._k.request(tenant, req.request_id)
        field = f"rated:{user}"
        try:
            claimed = await self._claim(keys=[index], args=[field, req.rating])
        except Exception as exc:
            raise _store_down() from exc
        if claimed == 0:
            raise APIError(404, f"No request '{req.request_id}' of your tenant is known.",
                           code="request_not_found", param="request_id")
        if claimed == 1:
            raise APIError(409, f"You have already rated request '{req.request_id}'.",
                           code="feedback_already_given", param="request_id")
        model = claimed.decode() if isinstance(claimed, bytes) else str(claimed)
        feedback_id = f"fb-{uuid.uuid4().hex}"
        if self._audit is not None:
            try:
                await self._audit.record(feedback_record(
                    request_id=req.request_id, tenant=tenant, user=user, model_id=model,
                    rating=req.rating, comment=req.comment, feedback_id=feedback_id,
                ))
            except BaseException:
                await self._unclaim(index, field)  # not recorded: the user may rate again
                raise
        try:
            await self._r.hincrby(self._k.feedback(model), "up" if req.rating > 0 else "down", 1)
        except Exception as exc:
            # claimed and on the audit trail: answering 503 would invite a retry that gets 409
            logger.warning("feedback %s recorded, but the per-model counter missed it (%s)",
                           feedback_id, type(exc).__name__)
        if self._metrics is not None:
            self._metrics.feedback(model, req.rating)
        return {"id": feedback_id, "object": "feedback", "request_id": req.request_id,
                "model": model, "rating": req.rating}

    async def _unclaim(self, index: str, field: str) -> None:
        try:
            await self._r.hdel(index, field)
        except Exception:
            pass  # the store went away too: the claim stays and the rating is lost, not doubled
