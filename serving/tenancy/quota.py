"""Per-tenant limits shared by all router replicas: RPM, TPM, monthly token budget.

Admission and settlement are single Lua scripts in the shared store, so
concurrent router replicas never race between checking a limit and counting
against it.

* Requests per minute: a per-minute window counter, checked and incremented at admission.
* Tokens per minute: admission requires the minute's settled tokens to be below the
  limit; a request's real tokens are added when it ends (streams included).
* Monthly budget (hard cap): admission *reserves* the most tokens the request could
  consume (prompt + completion can never exceed the model's context per choice)
  and refuses if settled usage plus all open reservations plus this one would
  pass the cap; settlement releases the reservation and adds the real count. So
  the cap holds even with many requests in flight on many replicas. Reservations
  carry an expiry, so a router that dies mid-request cannot leak budget forever.

Months are calendar months in Asia/Tokyo: budgets are set by Japanese fiscal
rules, and the month boundary is midnight JST.

If the store cannot be reached, budgeted tenants are refused with 503 (fail
closed); tenants without limits are served. Settlements that fail are queued
in memory and retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from serving.config import ServingConfig
from serving.router.errors import APIError
from serving.router.pipeline import RequestContext
from serving.tenancy.store import StoreKeys

logger = logging.getLogger("govllm.quota")

TOKYO = ZoneInfo("Asia/Tokyo")
REQUEST_INDEX_TTL_S = 90 * 24 * 3600  # feedback accepted for 90 days

_ADMIT = """
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
if rpm > 0 then
  local c = redis.call('INCR', KEYS[1])
  if c == 1 then redis.call('EXPIRE', KEYS[1], 120) end
  if c > rpm then redis.call('DECR', KEYS[1]); return {1, c - 1} end
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= tpm then
    if rpm > 0 then redis.call('DECR', KEYS[1]) end
    return {2, used}
  end
end
if budget > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
  local held = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    held = held + tonumber(string.match(m, '|(%d+)$'))
  end
  local used = tonumber(redis.call('HGET', KEYS[4], 'total_tokens') or '0')
  if used + held + reserve > budget then
    if rpm > 0 then redis.call('DECR', KEYS[1]) end
    return {3, used + held}
  end
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[5])
  redis.call('EXPIRE', KEYS[3], 3456000)
end
return {0, 0}
"""

_SETTLE = """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
local prompt, completion = tonumber(ARGV[2]), tonumber(ARGV[3])
local total = prompt + completion
if total > 0 then
  redis.call('INCRBY', KEYS[1], total)
  redis.call('EXPIRE', KEYS[1], 120)
end
local m, l, u = ARGV[4], ARGV[5], ARGV[6]
redis.call('HINCRBY', KEYS[3], 'total_tokens', total)
redis.call('HINCRBY', KEYS[3], 'requests', 1)
redis.call('HINCRBY', KEYS[3], 'model|' .. m .. '|requests', 1)
redis.call('HINCRBY', KEYS[3], 'model|' .. m .. '|prompt_tokens', prompt)
redis.call('HINCRBY', KEYS[3], 'model|' .. m .. '|completion_tokens', completion)
redis.call('HINCRBY', KEYS[3], 'level|' .. l .. '|requests', 1)
redis.call('HINCRBY', KEYS[3], 'level|' .. l .. '|tokens', total)
redis.call('HINCRBY', KEYS[3], 'usage_type|' .. u .. '|requests', 1)
redis.call('HINCRBY', KEYS[3], 'usage_type|' .. u .. '|tokens', total)
if ARGV[7] ~= '' then redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[8]) end
return total
"""


def month_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, TOKYO).strftime("%Y-%m")


def seconds_to_next_month(ts: float) -> int:
    now = datetime.fromtimestamp(ts, TOKYO)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return max(1, math.ceil((nxt - now).total_seconds()))


def reservation_for(ctx: RequestContext) -> int:
    """Most tokens this request can consume: each choice is bounded by the context length."""
    payload = ctx.payload or {}
    n = int(payload.get("n") or 1)
    limit = max(m.max_model_len for m in ctx.candidates)
    asked = payload.get("max_completion_tokens") or payload.get("max_tokens") or limit
    # A byte-level tokenizer never makes more tokens than bytes, so the body size bounds the prompt.
    return n * min(limit, len(ctx.raw_body) + int(asked))


class QuotaLedger:
    """Admission (a request-path step) and settlement (a finisher) against the shared store."""

    def __init__(self, config: ServingConfig, client, keys: StoreKeys, *, metrics=None):
        self._r = client
        self._k = keys
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._metrics = metrics
        self._retry: deque = deque(maxlen=100_000)
        self.store_up = True
        self._reservation_ttl_s = config.router.request_timeout_s + 60

    def _keys(self, tenant: str, now: float) -> tuple[str, str, str, str]:
        minute = int(now // 60)
        tag = "{" + tenant + "}"  # one hash slot per tenant, so the scripts also run on Redis Cluster
        return (
            self._k("q", tag, "rpm", str(minute)),
            self._k("q", tag, "tpm", str(minute)),
            self._k("q", tag, "reservations"),
            self._k.ledger(tenant, month_of(now)),
        )

    def _mark(self, up: bool) -> None:
        if up != self.store_up:
            logger.warning("shared store is %s", "reachable again" if up else "UNREACHABLE")
        self.store_up = up
        if self._metrics is not None:
            self._metrics.store_up(up)

    async def __call__(self, ctx: RequestContext) -> None:
        limits = ctx.tenant.limits
        if not limits.any:
            return
        now = time.time()
        rpm_key, tpm_key, resv_key, ledger_key = self._keys(ctx.tenant.id, now)
        reserve = reservation_for(ctx) if limits.monthly_token_budget else 0
        member = f"{ctx.request_id}|{reserve}"
        try:
            verdict, seen = await self._admit(
                keys=[rpm_key, tpm_key, resv_key, ledger_key],
                args=[
                    limits.requests_per_minute or 0,
                    limits.tokens_per_minute or 0,
                    limits.monthly_token_budget or 0,
                    reserve,
                    member,
                    now,
                    now + self._reservation_ttl_s,
                ],
            )
        except Exception as exc:
            self._mark(False)
            raise APIError(
                503,
                "The quota store is unreachable, so requests of budgeted tenants cannot be "
                "admitted right now; retry shortly.",
                code="quota_store_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        self._mark(True)
        if verdict == 0:
            if reserve:
                ctx.reservation = member
            return
        limit, retry = self._refusal(int(verdict), now)
        if self._metrics is not None:
            self._metrics.quota_rejected(ctx.tenant.id, limit)
        value = {"requests_per_minute": limits.requests_per_minute,
                 "tokens_per_minute": limits.tokens_per_minute,
                 "monthly_token_budget": limits.monthly_token_budget}[limit]
        detail = (
            f"this request could use up to {reserve} more tokens and {int(seen)} are used or reserved"
            if limit == "monthly_token_budget" else f"{int(seen)} used in the current minute"
        )
        raise APIError(
            429,
            f"Tenant '{ctx.tenant.id}' reached its {limit} limit of {value} ({detail}). "
            f"Retry after {retry} s.",
            code=f"{limit}_exceeded",
            type="insufficient_quota" if limit == "monthly_token_budget" else "rate_limit_error",
            headers={"Retry-After": str(retry)},
        )

    @staticmethod
    def _refusal(verdict: int, now: float) -> tuple[str, int]:
        if verdict == 3:
            return "monthly_token_budget", seconds_to_next_month(now)
        limit = "requests_per_minute" if verdict == 1 else "tokens_per_minute"
        return limit, max(1, 60 - int(now % 60))

    async def settle(self, ctx: RequestContext) -> None:
        """Finisher: count what the request really used; release its reservation."""
        if ctx.tenant is None or ctx.model is None:
            return
        usage = ctx.usage or {}
        now = time.time()
        _, tpm_key, resv_key, ledger_key = self._keys(ctx.tenant.id, now)
        job = (
            [tpm_key, resv_key, ledger_key, self._k.request(ctx.request_id)],
            [
                ctx.reservation or "",
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                ctx.model.id,
                ctx.confidentiality or 0,
                ctx.usage_type or ctx.tenant.usage_type,
                f"{ctx.tenant.id}|{ctx.model.id}",
                REQUEST_INDEX_TTL_S,
            ],
        )
        try:
            await self._settle(keys=job[0], args=job[1])
            self._mark(True)
        except Exception as exc:
            self._mark(False)
            logger.warning("settlement of %s deferred: %s", ctx.request_id, exc)
            self._retry.append(job)

    async def retry_deferred(self) -> None:
        """Background task: replay settlements that failed while the store was down."""
        while True:
            await asyncio.sleep(1.0)
            while self._retry:
                keys, args = self._retry[0]
                try:
                    await self._settle(keys=keys, args=args)
                except Exception:
                    break
                self._retry.popleft()
                self._mark(True)

    @property
    def deferred(self) -> int:
        return len(self._retry)
