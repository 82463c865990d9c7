"""The shared store (Redis): one place for everything that must hold across router replicas.

API-key records, quota windows, budget reservations, the monthly usage
ledger, the request index for feedback and feedback counters all live here,
under one namespace prefix so several applications can share a Redis.
Every call is bounded by `StoreSettings.timeout_s`: a store that answers
slower than that counts as down, and budgeted tenants are refused (fail
closed) rather than served without a limit.
"""

from __future__ import annotations

from serving.config import StoreSettings


class StoreKeys:
    """Names of the store's keys; the one place that spells them."""

    def __init__(self, namespace: str):
        self.ns = namespace

    def __call__(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    @property
    def api_keys(self) -> str:
        return self("keys")

    @property
    def api_keys_changed(self) -> str:
        return self("keys", "changed")

    def request(self, request_id: str) -> str:
        return self("req", request_id)

    def ledger(self, tenant: str, month: str) -> str:
        """The tenant's usage ledger for a month (YYYY-MM, Asia/Tokyo); tagged for Redis Cluster."""
        return self("ledger", "{" + tenant + "}", month)

    def feedback(self, model_id: str) -> str:
        return self("feedback", model_id)

    @property
    def audit_heads(self) -> str:
        """Hash: audit chain -> its last uploaded sequence number and digest."""
        return self("audit", "heads")


def async_client(settings: StoreSettings):
    import redis.asyncio as aredis

    return aredis.from_url(
        settings.resolved_url(),
        socket_timeout=settings.timeout_s,
        socket_connect_timeout=settings.timeout_s,
        decode_responses=False,
    )


def sync_client(settings: StoreSettings):
    import redis

    return redis.from_url(
        settings.resolved_url(),
        socket_timeout=max(settings.timeout_s, 5.0),
        socket_connect_timeout=max(settings.timeout_s, 5.0),
        decode_responses=False,
    )
