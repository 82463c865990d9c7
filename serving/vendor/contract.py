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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.config.vendor import VendorLimits

logger = logging.getLogger("govllm.vendor")

# KEYS: rpm window, tpm window. ARGV: rpm limit (0: none), tpm limit (0: none), tokens to count.
# Returns {0, 0} when admitted, {1, used} over requests, {2, used} over tokens.
_ADMIT = """
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
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
return {0, 0}
"""


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

    @property
    def active(self) -> bool:
        return bool(self.limits.requests_per_minute or self.limits.tokens_per_minute)

    def _windows(self, now: float) -> tuple[str, str]:
        minute = str(int(now // 60))
        return (self._keys.contract(self.model_id, "rpm", minute),
                self._keys.contract(self.model_id, "tpm", minute))

    async def acquire(self, tokens: int) -> Ticket:
        """Count one request of at most `tokens` tokens, or raise ContractRefused."""
        if not self.active:
            return Ticket(None, 0)
        now = self._clock()
        rpm_key, tpm_key = self._windows(now)
        counted = tokens if self.limits.tokens_per_minute else 0
        retry = max(1, 60 - int(now % 60))
        try:
            verdict, used = await asyncio.wait_for(
                self._admit(keys=[rpm_key, tpm_key],
                            args=[self.limits.requests_per_minute or 0,
                                  self.limits.tokens_per_minute or 0, counted]),
                self._timeout_s)
        except Exception as exc:
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
