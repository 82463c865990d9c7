"""API-key records in the shared store.

`KeyAdmin` is what `govllm keys ...` uses (synchronous). `KeyCache` lives in
every router replica: it holds all records in memory (so verifying a key is a
dictionary lookup, no store round trip), reloads them when the admin
publishes a change (so a revoked key fails on every replica at once), and
reloads periodically as a safety net for a missed message. If the store is
unreachable the replica keeps its last copy: keys keep working, and no key
can be created or revoked meanwhile anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time

from serving.keys import KeyRecord, Principal, issue_key, verify
from serving.tenancy.store import StoreKeys

logger = logging.getLogger("govllm.keys")


class KeyAdmin:
    def __init__(self, client, keys: StoreKeys):
        self._r = client
        self._k = keys

    def _records(self) -> dict[str, KeyRecord]:
        raw = self._r.hgetall(self._k.api_keys)
        return {k.decode(): KeyRecord.from_json(v) for k, v in raw.items()}

    def _save(self, record: KeyRecord) -> None:
        pipe = self._r.pipeline()
        pipe.hset(self._k.api_keys, record.key_id, record.to_json())
        pipe.publish(self._k.api_keys_changed, record.key_id)
        pipe.execute()

    def create(self, tenant: str, user: str, description: str = "") -> tuple[str, KeyRecord]:
        plaintext, record = issue_key(tenant, user, description)
        self._save(record)
        return plaintext, record

    def list(self, tenant: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        records = sorted(self._records().values(), key=lambda r: r.created_at)
        return [
            r for r in records
            if (tenant is None or r.tenant == tenant) and (include_revoked or r.revoked_at is None)
        ]

    def get(self, key_id: str) -> KeyRecord | None:
        raw = self._r.hget(self._k.api_keys, key_id)
        return KeyRecord.from_json(raw) if raw else None

    def revoke(self, key_id: str) -> KeyRecord:
        record = self.get(key_id)
        if record is None:
            raise KeyError(f"no API key with id {key_id}")
        if record.revoked_at is None:
            record.revoked_at = time.time()
            self._save(record)
        return record

    def rotate(self, key_id: str) -> tuple[str, KeyRecord]:
        """A new key for the same tenant and user; the old one is revoked at once."""
        old = self.get(key_id)
        if old is None:
            raise KeyError(f"no API key with id {key_id}")
        plaintext, record = self.create(old.tenant, old.user, old.description or f"rotated from {key_id}")
        self.revoke(key_id)
        return plaintext, record

    def verify(self, presented: str) -> Principal | None:
        return verify(presented, self._records())


class KeyCache:
    """Router-side copy of the key records, refreshed on change notifications."""

    def __init__(self, client, keys: StoreKeys, *, reload_s: float = 30.0):
        self._r = client
        self._k = keys
        self._reload_s = reload_s
        self._records: dict[str, KeyRecord] = {}
        self.loaded_at = 0.0

    async def load(self) -> None:
        raw = await self._r.hgetall(self._k.api_keys)
        self._records = {k.decode(): KeyRecord.from_json(v) for k, v in raw.items()}
        self.loaded_at = time.monotonic()

    def authenticate(self, presented: str) -> Principal | None:
        return verify(presented, self._records)

    async def watch(self) -> None:
        """Reload on every change message; reconnect and reload after store outages."""
        while True:
            pubsub = self._r.pubsub()
            try:
                await pubsub.subscribe(self._k.api_keys_changed)
                await self.load()  # anything changed while we were not subscribed
                while True:
                    # short waits: the client's socket timeout (the store timeout) bounds every read
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                    if msg is not None or time.monotonic() - self.loaded_at > self._reload_s:
                        await self.load()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("key store unreachable (%s); keeping %d cached keys", exc, len(self._records))
                await asyncio.sleep(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass


def ensure_dev_key(admin: KeyAdmin, *, tenant: str, key_path) -> bool:
    """Issue the development key on first start; keep it while the store still accepts it.

    The plaintext goes to `key_path` (mode 0600). Returns True when a key was issued now.
    """
    from pathlib import Path

    from serving.keys import write_private

    key_path = Path(key_path)
    if key_path.is_file():
        existing = key_path.read_text(encoding="utf-8").strip()
        principal = admin.verify(existing)
        if principal is not None and principal.tenant == tenant:
            return False
    plaintext, _ = admin.create(tenant, "developer", description="development key (govllm serve)")
    write_private(key_path, plaintext + "\n")
    return True
