"""A vendor's contractual request and token rates, counted across every router replica.

The government must never exceed what it bought, whichever router replica a
request lands on, so the counters live in the shared store, one Lua script
per decision (no race between checking and counting), under the endpoint's own
hash tag (one Redis Cluster slot). Per minute window:

* requests: counted at admission; one over the limit is refused.
* tokens: a request is counted at admission with its largest possible size
  (the reservation bound: prompt bytes plus max_tokens, or the context), the
  way vendors' own rate limiters count; when it ends the window is corrected
  to the real usage. So in-flight requests can never push the minute past the
  contract, at the price of admitting fewer long-`max_tokens` requests at once.

Concurrency is not counted here: each router admits its share of
`max_concurrency` (serving/router/admission/), as for self-hosted replicas.

A refused request tries the next model of its alias group; when none is left
it gets 429 `vendor_rate_limited` with Retry-After to the next minute. If the
store cannot be reached, a vendor model with limits is not used (fail closed):
the contract is a hard promise, like a tenant's budget.

Counting is idempotent per request: the script marks the request id in the
minute's window, so a call that the Redis client retried after the first had
already counted (redis-py retries a command whose answer timed out) counts the
request once; a request refused because the answer was lost is uncounted in the
background once the store answers again (the mark says whether it was counted,
and the take-back voids it, so an admission that runs later counts nothing).
Until then the window over-counts, the safe direction for a contract.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.config.vendor import VendorLimits
from serving.store import run_idempotent_script

logger = logging.getLogger("govllm.vendor")

# KEYS: rpm window, tpm window, the minute's admission marks. ARGV: rpm limit (0: none),
# tpm limit (0: none), tokens to count, request id.
# Returns {0, 0} when admitted (now or by an earlier run of this call), {1, used} over requests,
# {2, used} over tokens.
_ADMIT = """
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then return {0, 0} end
if rpm > 0 then
  local c = tonumber(redis.call('GET', KEYS[1]) or '0')
  if c >= rpm then return {1, c} end
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used + tokens > tpm then return {2, used} end
  redis.call('INCRBY', KEYS[2], tokens)
  redis.call('EXPIRE', KEYS[2], 180)
end
if rpm > 0 then
  redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], 180)
end
redis.call('HSET', KEYS[3], ARGV[4], 1)
redis.call('EXPIRE', KEYS[3], 180)
return {0, 0}
"""

# Takes back a request whose admission answer was lost, if (and only if) the admission counted it,
# and voids its mark ('0'), so an admission still on its way (queued in a stopped store, say)
# finds the mark when it runs after this and counts nothing: exactly once in either order.
# KEYS: as _ADMIT. ARGV: request id, whether requests are counted (1/0), tokens counted.
_UNCOUNT = """
local mark = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], 0)
redis.call('EXPIRE', KEYS[3], 180)
if mark ~= '1' then return 0 end
if ARGV[2] == '1' then redis.call('DECR', KEYS[1]) end
if tonumber(ARGV[3]) > 0 then redis.call('DECRBY', KEYS[2], ARGV[3]) end
return 1
"""
#: How long a lost admission is retried for being uncounted: past its minute, the count is moot.
_UNCOUNT_FOR_S = 60.0


class ContractRefused(Exception):
    """The endpoint is at a contractual limit (or its counters cannot be read)."""

    def __init__(self, model_id: str, limit: str, retry_after_s: int, detail: str):
        super().__init__(detail)
        self.model_id, self.limit, self.retry_after_s, self.detail = model_id, limit, retry_after_s, detail


@dataclass
class Ticket:
    """One admitted request's entry in the token window, corrected when it ends."""

    key: str | None
    counted: int

    def correction(self, used: int) -> int:
        return used - self.counted


class ContractLimiter:
    """Admission against one vendor endpoint's contractual limits, in the shared store."""

    def __init__(self, model_id: str, limits: VendorLimits, client, keys, *, timeout_s: float,
                 clock: Callable[[], float] = time.time):
        self.model_id = model_id
        self.limits = limits
        self._r = client
        self._keys = keys
        self._timeout_s = timeout_s
        self._clock = clock
        self._admit = client.register_script(_ADMIT) if self.active else None
        self._uncount = client.register_script(_UNCOUNT) if self.active else None
        self._uncounting: set[asyncio.Task] = set()

    @property
    def active(self) -> bool:
        return bool(self.limits.requests_per_minute or self.limits.tokens_per_minute)

    def _windows(self, now: float) -> tuple[str, str, str]:
        minute = str(int(now // 60))
        return (self._keys.contract(self.model_id, "rpm", minute),
                self._keys.contract(self.model_id, "tpm", minute),
                self._keys.contract(self.model_id, "admitted", minute))

    async def acquire(self, tokens: int, request_id: str) -> Ticket:
        """Count one request of at most `tokens` tokens, or raise ContractRefused.

        Counted once per `request_id` whatever the client retried (see the module docstring).
        """
        if not self.active:
            return Ticket(None, 0)
        now = self._clock()
        keys = self._windows(now)
        tpm_key = keys[1]
        counted = tokens if self.limits.tokens_per_minute else 0
        retry = max(1, 60 - int(now % 60))
        try:
            verdict, used = await asyncio.wait_for(
                run_idempotent_script(self._admit, list(keys),
                                      [self.limits.requests_per_minute or 0,
                                       self.limits.tokens_per_minute or 0, counted, request_id]),
                self._timeout_s)
        except Exception as exc:
            self._uncount_later(list(keys), [request_id, 1 if self.limits.requests_per_minute else 0,
                                             counted])
            raise ContractRefused(self.model_id, "store", 5,
                                  "its contract counters cannot be read (shared store unreachable)") from exc
        if int(verdict) == 1:
            raise ContractRefused(self.model_id, "requests_per_minute", retry,
                                  f"the contract's {self.limits.requests_per_minute} requests per "
                                  "minute are used")
        if int(verdict) == 2:
            if counted > (self.limits.tokens_per_minute or 0):
                raise ContractRefused(self.model_id, "tokens_per_minute", retry,
                                      f"this request could use {counted} tokens, more than the "
                                      f"contract's {self.limits.tokens_per_minute} per minute; "
                                      "lower max_tokens")
            raise ContractRefused(self.model_id, "tokens_per_minute", retry,
                                  f"{int(used)} of the contract's {self.limits.tokens_per_minute} "
                                  "tokens per minute are used or reserved")
        return Ticket(tpm_key if counted else None, counted)

    def _uncount_later(self, keys: list[str], args: list) -> None:
        """Take back, once the store answers, a request whose admission answer was lost."""
        task = asyncio.get_running_loop().create_task(self._uncount_when_reachable(keys, args))
        self._uncounting.add(task)
        task.add_done_callback(self._uncounting.discard)

    async def _uncount_when_reachable(self, keys: list[str], args: list) -> None:
        deadline = time.monotonic() + _UNCOUNT_FOR_S
        while True:
            try:
                await asyncio.wait_for(run_idempotent_script(self._uncount, keys, args), self._timeout_s)
                return
            except Exception as exc:
                if time.monotonic() >= deadline:  # the window over-counts: the safe direction
                    logger.warning("contract count of a lost admission for %s not taken back: %s",
                                   self.model_id, type(exc).__name__)
                    return
                await asyncio.sleep(1.0)

    async def settle(self, ticket: Ticket, used_tokens: int) -> None:
        """Replace the admission estimate by the real usage in the window it was counted in."""
        if ticket.key is None:
            return
        delta = ticket.correction(used_tokens)
        if delta == 0:
            return
        try:
            await asyncio.wait_for(self._r.incrby(ticket.key, delta), self._timeout_s)
        except Exception as exc:  # the estimate stays: the window over-counts, never under
            logger.warning("contract window correction for %s failed: %s", self.model_id,
                           type(exc).__name__)
