"""Per-tenant limits shared by all router replicas: RPM, TPM, monthly token budget.

Admission and settlement are single Lua scripts in the shared store, so
concurrent router replicas never race between checking a limit and counting
against it. Each script touches only keys under the tenant's hash tag, so it
runs in one slot of a Redis Cluster too.

* Requests per minute: a per-minute window counter, checked and incremented at admission.
* Tokens per minute: admission requires the minute's settled tokens to be below the
  limit; a request's real tokens are added when it ends (streams included).
* Monthly budget (hard cap): admission *reserves* the most tokens the request could
  consume (serving/tenancy/reservation.py) and refuses if settled usage plus all
  open reservations plus this one would pass the cap; settlement releases the
  reservation and adds the real count. So the cap holds even with many requests
  in flight on many replicas. Reservations carry an expiry, so a router that dies
  mid-request cannot leak budget forever.

Settlement runs after every request, whatever happened to it: a request that
never reached a model (no replica, timed out in the queue, cancelled) only
releases its reservation. It is idempotent per request id (the request index
`req:{tenant}:<id>` doubles as the "settled" mark), so a settlement replayed
after a store timeout that had in fact been applied is not counted twice.

Admission is idempotent per request id too (a mark in the minute's window, so a
client retry of a script that had run is not counted twice), and a request
refused because admission's answer was lost (503) is uncounted by its settlement,
which voids the mark: an admission still on its way (queued in a stopped store)
that runs after the settlement finds it and counts nothing.

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
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from serving.config import ServingConfig
from serving.request import APIError, RequestContext
from serving.store import StoreKeyspace, run_idempotent_script
from serving.tenancy.reservation import reservation_for

__all__ = ["QuotaLedger", "month_of", "rate_limit_headers", "reservation_for", "seconds_to_next_month"]

logger = logging.getLogger("govllm.quota")

TOKYO = ZoneInfo("Asia/Tokyo")
REQUEST_INDEX_TTL_S = 90 * 24 * 3600  # feedback accepted for 90 days
MAX_DEFERRED = 100_000  # settlements kept while the store is down

# Returns {verdict, what was seen, requests admitted this minute, tokens settled this minute};
# the last two feed the x-ratelimit-* headers (-1 where not read).
# KEYS: rpm window, tpm window, reservations, ledger, the minute's admission marks.
# ARGV: rpm, tpm, budget, tokens to reserve, reservation member, now, reservation expiry,
# request id. Idempotent per request id: a call the client retried after the first had
# already counted (or a replay) finds its mark and is not counted again.
_ADMIT = """
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local c, tused = 0, -1
if rpm > 0 and redis.call('HEXISTS', KEYS[5], ARGV[8]) == 1 then
  return {0, 0, tonumber(redis.call('GET', KEYS[1]) or '0'), tused}
end
if rpm > 0 then
  c = redis.call('INCR', KEYS[1])
  if c == 1 then redis.call('EXPIRE', KEYS[1], 120) end
  if c > rpm then redis.call('DECR', KEYS[1]); return {1, c - 1, c - 1, -1} end
end
if tpm > 0 then
  tused = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tused >= tpm then
    if rpm > 0 then redis.call('DECR', KEYS[1]) end
    return {2, tused, c - 1, tused}
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
    return {3, used + held, c - 1, tused}
  end
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[5])
  redis.call('EXPIRE', KEYS[3], 3456000)
end
if rpm > 0 then
  redis.call('HSET', KEYS[5], ARGV[8], 1)
  redis.call('EXPIRE', KEYS[5], 120)
end
return {0, 0, c, tused}
"""

# KEYS: tpm window, reservations, ledger, request index, and for a request whose admission
# answer was lost the rpm window and admission marks of its minute (all under the tenant's tag).
# ARGV: reservation member ('' for none), prompt, completion, model ('' when none answered),
# level, usage type, request index TTL, request id to uncount ('' for none). Returns the tokens
# counted, -1 (released only) or -2 (already settled).
_SETTLE = """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
if ARGV[8] ~= '' then
  local mark = redis.call('HGET', KEYS[6], ARGV[8])
  redis.call('HSET', KEYS[6], ARGV[8], 0)
  redis.call('EXPIRE', KEYS[6], 120)
  if mark == '1' then redis.call('DECR', KEYS[5]) end
end
local m = ARGV[4]
if m == '' then return -1 end
if redis.call('HSETNX', KEYS[4], 'model', m) == 0 then return -2 end
redis.call('EXPIRE', KEYS[4], ARGV[7])
local prompt, completion = tonumber(ARGV[2]), tonumber(ARGV[3])
local total = prompt + completion
if total > 0 then
  redis.call('INCRBY', KEYS[1], total)
  redis.call('EXPIRE', KEYS[1], 120)
end
local l, u = ARGV[5], ARGV[6]
redis.call('HINCRBY', KEYS[3], 'total_tokens', total)
redis.call('HINCRBY', KEYS[3], 'requests', 1)
redis.call('HINCRBY', KEYS[3], 'model|' .. m .. '|requests', 1)
redis.call('HINCRBY', KEYS[3], 'model|' .. m .. '|prompt_tokens', prompt)
redis.call('HINCRBY', KEYS[3], 'model|' .. m .. '|completion_tokens', completion)
redis.call('HINCRBY', KEYS[3], 'level|' .. l .. '|requests', 1)
redis.call('HINCRBY', KEYS[3], 'level|' .. l .. '|tokens', total)
redis.call('HINCRBY', KEYS[3], 'usage_type|' .. u .. '|requests', 1)
redis.call('HINCRBY', KEYS[3], 'usage_type|' .. u .. '|tokens', total)
return total
"""


def rate_limit_headers(limits, requests: int, tokens: int, now: float) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers for the per-minute limits a tenant has.

    `requests`: requests admitted in this minute (this one included); `tokens`: tokens settled
    in it (-1: not read). Both windows reset at the next minute boundary (Asia/Tokyo minutes are
    UTC minutes). The official SDKs and gateways pace themselves by these.
    """
    reset = f"{max(1, 60 - int(now % 60))}s"
    out: list[tuple[bytes, bytes]] = []
    if limits.requests_per_minute:
        out += [(b"x-ratelimit-limit-requests", str(limits.requests_per_minute).encode()),
                (b"x-ratelimit-remaining-requests",
                 str(max(0, limits.requests_per_minute - max(requests, 0))).encode()),
                (b"x-ratelimit-reset-requests", reset.encode())]
    if limits.tokens_per_minute and tokens >= 0:
        out += [(b"x-ratelimit-limit-tokens", str(limits.tokens_per_minute).encode()),
                (b"x-ratelimit-remaining-tokens", str(max(0, limits.tokens_per_minute - tokens)).encode()),
                (b"x-ratelimit-reset-tokens", reset.encode())]
    return out


def reservation_member(request_id: str, tokens: int) -> str:
    """A reservation in the tenant's sorted set: `<request id>|<tokens>` (the Lua scripts sum
    the part after the last `|`)."""
    return f"{request_id}|{tokens}"


def reserved_tokens(member: bytes | str) -> int:
    """The tokens a reservation member holds; 0 for a member not in that form."""
    text = member.decode() if isinstance(member, bytes) else member
    try:
        return int(text.rsplit("|", 1)[1])
    except (IndexError, ValueError):
        return 0


def month_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, TOKYO).strftime("%Y-%m")


def seconds_to_next_month(ts: float) -> int:
    now = datetime.fromtimestamp(ts, TOKYO)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return max(1, math.ceil((nxt - now).total_seconds()))


class QuotaLedger:
    """Admission (a request-path step) and settlement (a finisher) against the shared store.

    `clock` gives the wall time (seconds since the epoch) that names minute windows and
    months and dates reservations; tests pass a fixed one instead of waiting for minutes.
    """

    def __init__(self, config: ServingConfig, client, keys: StoreKeyspace, *, metrics=None,
                 clock: Callable[[], float] = time.time):
        self._r = client
        self._k = keys
        self._clock = clock
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._metrics = metrics
        self._retry: deque[tuple[str, list, list]] = deque()
        self._dropped = 0
        self.store_up = True
        self._timeout_s = config.store.timeout_s
        # a reservation outlives its request: queueing for a slot, then the request itself
        self._reservation_ttl_s = config.router.request_timeout_s + config.router.max_queue_wait_s + 60

    def _keys(self, tenant: str, now: float) -> tuple[str, str, str, str, str]:
        minute = str(int(now // 60))
        return (
            self._k.quota(tenant, "rpm", minute),
            self._k.quota(tenant, "tpm", minute),
            self._k.quota(tenant, "reservations"),
            self._k.ledger(tenant, month_of(now)),
            self._k.quota(tenant, "admitted", minute),  # request ids counted in the rpm window
        )

    def _mark(self, up: bool) -> None:
        if up != self.store_up:
            logger.warning("shared store is %s", "reachable again" if up else "UNREACHABLE")
        self.store_up = up
        if self._metrics is not None:
            self._metrics.store_up(up)

    async def _run(self, script, keys: list, args: list):
        """One script call, bounded by store.timeout_s however the client retries inside."""
        started = time.perf_counter()
        try:
            # both scripts are idempotent per request id, so a failed client call may be tried again
            return await asyncio.wait_for(run_idempotent_script(script, keys, args), self._timeout_s)
        finally:
            if self._metrics is not None:  # govllm_store_command_seconds
                self._metrics.store_command("admit" if script is self._admit else "settle",
                                            time.perf_counter() - started)

    async def __call__(self, ctx: RequestContext) -> None:
        """Admission: refuse (429/503) or count the request and reserve its budget."""
        limits = ctx.tenant.limits
        if not limits.any:
            return
        now = self._clock()
        rpm_key, tpm_key, resv_key, ledger_key, marks_key = self._keys(ctx.tenant.id, now)
        reserve = reservation_for(ctx) if limits.monthly_token_budget else 0
        member = reservation_member(ctx.request_id, reserve)
        if reserve:
            # set before the call: a script that ran although its answer timed out holds
            # this reservation, and settlement must release it whatever happens next
            ctx.reservation, ctx.reserved_tokens = member, reserve
        try:
            verdict, seen, requests, tokens = await self._run(
                self._admit,
                [rpm_key, tpm_key, resv_key, ledger_key, marks_key],
                [
                    limits.requests_per_minute or 0,
                    limits.tokens_per_minute or 0,
                    limits.monthly_token_budget or 0,
                    reserve,
                    member,
                    now,
                    now + self._reservation_ttl_s,
                    ctx.request_id,
                ],
            )
        except Exception as exc:
            self._mark(False)
            if limits.requests_per_minute:
                # the script may have counted the request although its answer was lost: the
                # settlement that follows every request takes that count back
                ctx.uncounted = (rpm_key, marks_key)
            raise APIError(
                503,
                "The quota store is unreachable, so requests of budgeted tenants cannot be "
                "admitted right now; retry shortly.",
                code="quota_store_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        self._mark(True)
        limit_headers = rate_limit_headers(limits, int(requests), int(tokens), now)
        if verdict == 0:
            ctx.response_headers.extend(limit_headers)
            return
        ctx.reservation, ctx.reserved_tokens = None, 0  # refused: nothing was reserved
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
            headers={"Retry-After": str(retry),
                     **{k.decode(): v.decode() for k, v in limit_headers}},
        )

    @staticmethod
    def _refusal(verdict: int, now: float) -> tuple[str, int]:
        if verdict == 3:
            return "monthly_token_budget", seconds_to_next_month(now)
        limit = "requests_per_minute" if verdict == 1 else "tokens_per_minute"
        return limit, max(1, 60 - int(now % 60))

    async def settle(self, ctx: RequestContext) -> None:
        """Finisher, on every path: release the reservation; bill the usage if a model answered.

        With `ctx.model` None (no model was chosen: no replica, a timeout or cancellation
        before dispatch, a shed request) nothing is counted. Billing is idempotent per
        request id, so calling this twice for one ctx, or replaying it after a timeout that
        had in fact been applied, counts the request once. Never raises: a settlement the
        store does not take now is kept and replayed by `retry_deferred`.
        """
        if ctx.tenant is None or (ctx.model is None and not ctx.reservation and not ctx.uncounted):
            return
        now = self._clock()
        _, tpm_key, resv_key, ledger_key, _ = self._keys(ctx.tenant.id, now)
        usage = ctx.usage or {}
        keys = [tpm_key, resv_key, ledger_key, self._k.request(ctx.tenant.id, ctx.request_id)]
        if ctx.uncounted:
            keys += ctx.uncounted
        args = [
            ctx.reservation or "",
            _tokens(usage.get("prompt_tokens")),
            _tokens(usage.get("completion_tokens")),
            ctx.model.id if ctx.model is not None else "",
            ctx.confidentiality or 0,
            ctx.usage_type or ctx.tenant.usage_type,
            REQUEST_INDEX_TTL_S,
            ctx.request_id if ctx.uncounted else "",
        ]
        ctx.reservation, ctx.uncounted = None, None  # released (now or by a replay): a second call only re-bills, a no-op
        try:
            await self._run(self._settle, keys, args)
            self._mark(True)
        except Exception as exc:
            self._mark(False)
            logger.warning("settlement of %s deferred: %s", ctx.request_id, type(exc).__name__)
            self._defer(ctx.request_id, keys, args)

    def _defer(self, request_id: str, keys: list, args: list) -> None:
        if len(self._retry) >= MAX_DEFERRED:
            self._retry.popleft()
            self._dropped += 1
            logger.error("%d deferred settlements dropped (store down too long); the audit trail "
                         "has the usage of those requests", self._dropped)
        self._retry.append((request_id, keys, args))

    async def retry_deferred(self) -> None:
        """Background task: replay settlements that failed while the store was down."""
        while True:
            await asyncio.sleep(1.0)
            await self.replay()

    async def replay(self) -> int:
        """Replay deferred settlements in order until one fails; returns how many went through."""
        done = 0
        while self._retry:
            _, keys, args = self._retry[0]
            try:
                await self._run(self._settle, keys, args)
            except Exception:
                self._mark(False)
                break
            self._retry.popleft()
            self._mark(True)
            done += 1
        return done

    @property
    def deferred(self) -> int:
        return len(self._retry)


def _tokens(value) -> int:
    """A usage count as the engine reported it; anything else counts 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
