"""The shared store (Redis): one place for everything that must hold across router replicas.

API-key records, quota windows, budget reservations, the monthly usage
ledger, the request index for feedback and feedback counters all live here,
under one namespace prefix so several applications can share a Redis.
Every call is bounded by `StoreSettings.timeout_s`: a store that answers
slower than that counts as down, and budgeted tenants are refused (fail
closed) rather than served without a limit.

The store may be a single Redis or a Redis Cluster (`store.cluster`). Every
Lua script and every transaction touches keys of one hash slot only: a
tenant's keys carry the tenant as hash tag (`{tenant}`), and the API-key
records and their version counter are one hash. PUBLISH reaches every node
of a cluster, so key-change notifications work the same on both.
"""

from __future__ import annotations

import threading
from typing import Any

from serving.config import StoreSettings

#: Field of the API-key hash that counts changes (not a key id: those are 12 hex digits). Kept
#: inside the hash so a change and its count are written in one key (one slot, one MULTI), and
#: a full read returns the records together with the version they belong to.
KEYS_VERSION_FIELD = "#version"


class StoreKeyspace:
    """Names of the store's keys; the one place that spells them."""

    def __init__(self, namespace: str):
        if "{" in namespace or "}" in namespace:
            # a brace in the prefix would become the hash tag and put every tenant in one slot
            raise ValueError(f"store namespace {namespace!r} may not contain braces")
        self.ns = namespace

    def __call__(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    @staticmethod
    def tag(tenant: str) -> str:
        """The tenant's hash tag: all of a tenant's keys live in one Redis Cluster slot."""
        return "{" + tenant + "}"

    @property
    def api_keys(self) -> str:
        """Hash: key id -> KeyRecord JSON, plus the change counter KEYS_VERSION_FIELD."""
        return self("keys")

    @property
    def api_keys_changed(self) -> str:
        """Pub/sub channel: a key id, published after every change."""
        return self("keys", "changed")

    def quota(self, tenant: str, *parts: str) -> str:
        """A tenant's quota state (`rpm:<minute>`, `tpm:<minute>`, `reservations`)."""
        return self("q", self.tag(tenant), *parts)

    def request(self, tenant: str, request_id: str) -> str:
        """Hash of one answered request (`model`, one `rated:<user>` per rating), for feedback.

        Under the tenant's tag: settlement writes it in the same script as the ledger, and
        another tenant looking up the id finds nothing (the same 404 as an unknown id).
        """
        return self("req", self.tag(tenant), request_id)

    def ledger(self, tenant: str, month: str) -> str:
        """The tenant's usage ledger for a month (YYYY-MM, Asia/Tokyo); tagged for Redis Cluster."""
        return self("ledger", self.tag(tenant), month)

    def contract(self, model_id: str, *parts: str) -> str:
        """A vendor endpoint's contractual counters, under its own hash tag."""
        return self("vendor", "{vendor-" + model_id + "}", *parts)

    def feedback(self, model_id: str) -> str:
        return self("feedback", model_id)

    @property
    def audit_heads(self) -> str:
        """Hash: audit chain -> its last uploaded sequence number and digest."""
        return self("audit", "heads")


def async_client(settings: StoreSettings) -> Any:
    """The router's client: `redis.asyncio.Redis`, or `RedisCluster` when `store.cluster`.

    Neither connects before its first command, so a router starts while the store is down.
    """
    options = dict(
        socket_timeout=settings.timeout_s,
        socket_connect_timeout=settings.timeout_s,
        decode_responses=False,
    )
    if settings.cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(settings.resolved_url(), **options)
    import redis.asyncio as aredis

    return aredis.from_url(settings.resolved_url(), **options)


async def run_idempotent_script(script: Any, keys: list, args: list) -> Any:
    """Call a registered Lua script, a second time if the client failed the first call.

    redis-py 8.1's asyncio clients let transport-level errors of a connection being opened or
    reset escape as AttributeError/TypeError, past their own retries (redis/redis-py#4287); the
    cluster client hit it in this project's tests on the first concurrent calls of a script a
    node had not loaded yet (NOSCRIPT, then SCRIPT LOAD on a connection another call was still
    opening). Only scripts that count a request once whatever happens (a per-request mark) may be
    called twice, so only those use this; the caller bounds both tries with its own timeout.
    """
    try:
        return await script(keys=keys, args=args)
    except Exception:
        return await script(keys=keys, args=args)


def sync_client(settings: StoreSettings) -> Any:
    """The command line's client (and the audit heads'): `redis.Redis`, or `RedisCluster`.

    redis-py's synchronous cluster client discovers the cluster when constructed; it is
    wrapped so that, like the single-node client, it connects on its first command and a
    caller can handle an unreachable store where it handles every other store error.
    """
    timeout = max(settings.timeout_s, 5.0)
    options = dict(socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=False)
    if settings.cluster:
        return _LazyClusterClient(settings.resolved_url(), options)
    import redis

    return redis.from_url(settings.resolved_url(), **options)


class _LazyClusterClient:
    """A `redis.cluster.RedisCluster` built on first use (see `sync_client`)."""

    def __init__(self, url: str, options: dict):
        self._url, self._options = url, options
        self._client = None
        self._lock = threading.Lock()

    def _get(self):
        with self._lock:
            if self._client is None:
                from redis.cluster import RedisCluster

                self._client = RedisCluster.from_url(self._url, **self._options)
            return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
