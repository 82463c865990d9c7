"""Where each budgeted tenant stands this month: tokens settled, reservations in flight.

The monthly ledger and the reservations live in the shared store, written by
every router replica (serving/tenancy/quota.py); no replica's own counters
know the month's total. So each router reads them in the background, one
pipelined round trip for all budgeted tenants, and exports them as gauges;
every router reports the same values, so dashboards take the max per tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.config import TenantSettings
from serving.store import StoreKeyspace
from serving.tenancy.quota import month_of, reserved_tokens


@dataclass(frozen=True)
class Standing:
    tenant: str
    used: int  # tokens settled this month
    limit: int  # the monthly budget
    reservations: int  # requests holding a reservation
    reserved: int  # tokens those reservations hold


def budgeted(tenants: Sequence[TenantSettings]) -> list[TenantSettings]:
    return [t for t in tenants if t.limits.monthly_token_budget]


async def read_standing(client: Any, keys: StoreKeyspace, tenants: Sequence[TenantSettings],
                        now: float) -> list[Standing]:
    """One pipeline (no transaction: a Redis Cluster splits it per node) for every tenant given.

    Reservations whose expiry has passed are skipped, as admission skips them.
    """
    if not tenants:
        await client.ping()
        return []
    month = month_of(now)
    pipe = client.pipeline(transaction=False)
    for t in tenants:
        pipe.hget(keys.ledger(t.id, month), "total_tokens")
        pipe.zrangebyscore(keys.quota(t.id, "reservations"), now, "+inf")
    answers = await pipe.execute()
    out = []
    for i, t in enumerate(tenants):
        used, held = answers[2 * i], answers[2 * i + 1] or []
        out.append(Standing(
            tenant=t.id, used=int(used or 0), limit=int(t.limits.monthly_token_budget or 0),
            reservations=len(held), reserved=sum(reserved_tokens(m) for m in held),
        ))
    return out
