"""API-key records in the shared store.

`KeyAdmin` is what `govllm keys ...` uses (synchronous). `KeyCache` lives in
every router replica: it holds all records in memory (so verifying a key is a
dictionary lookup, no store round trip) and must never accept a key the store
has revoked for longer than `auth.key_staleness_s`:

* every change is written together with a change counter in one transaction
  (the counter is a field of the same hash, so the pair is one key and one
  Redis Cluster slot) and then announced on a pub/sub channel;
* the cache reloads on each announcement (immediacy), reads the counter about
  once a second and reloads when it moved (a lost message costs a second),
  and reloads everything every `reload_s` (a record edited by hand);
* the cache remembers when it last confirmed itself against the store. When
  that is older than the staleness bound (store unreachable, watcher stuck),
  `authenticate` raises `KeysUnconfirmed` instead of trusting its copy: the
  router answers 503 until the store answers again.

One damaged record never stops the others from loading: it is skipped and its
key id logged (never the record: it holds the salt and digest).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from serving.api_keys import KeyRecord, issue_key, split_key, verify
from serving.request import Principal
from serving.store import KEYS_VERSION_FIELD, StoreKeyspace

logger = logging.getLogger("govllm.keys")


class KeysUnconfirmed(Exception):
    """The key cache could not confirm its records with the store within the staleness bound.

    A revocation may have happened meanwhile, so no API key is accepted (503, Retry-After)
    until the cache has heard from the store again. The message is safe to show.
    """


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def parse_records(raw: dict, *, reported: set[str] | None = None) -> tuple[dict[str, KeyRecord], int]:
    """The readable records of the key hash and its change counter.

    A record that does not parse, or whose key id differs from its field, is skipped and
    logged once per key id (`reported` remembers which were logged).
    """
    records: dict[str, KeyRecord] = {}
    version = 0
    for field, value in raw.items():
        key_id = _text(field)
        if key_id == KEYS_VERSION_FIELD:
            try:
                version = int(value)
            except ValueError:
                logger.error("API-key change counter is not a number; treating it as 0")
            continue
        try:
            record = KeyRecord.from_json(value)
            if record.key_id != key_id:
                raise ValueError("stored under another key id")
        except ValueError as exc:
            if reported is None or key_id not in reported:
                logger.error("skipping unreadable API-key record %r: %s", key_id[:64], exc)
                if reported is not None:
                    reported.add(key_id)
            continue
        records[key_id] = record
    return records, version


class KeyAdmin:
    """Key management for `govllm keys` (synchronous client, single Redis or cluster)."""

    def __init__(self, client, keys: StoreKeyspace):
        self._r = client
        self._k = keys

    def _records(self) -> dict[str, KeyRecord]:
        return parse_records(self._r.hgetall(self._k.api_keys))[0]

    def _save(self, record: KeyRecord) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._k.api_keys, record.key_id, record.to_json())
        pipe.hincrby(self._k.api_keys, KEYS_VERSION_FIELD, 1)
        pipe.execute()
        try:
            self._r.publish(self._k.api_keys_changed, record.key_id)
        except Exception as exc:  # the change is stored: caches see the counter within a second
            logger.warning("key change stored but not announced (%s); caches pick it up by polling",
                           type(exc).__name__)

    def create(self, tenant: str, user: str, description: str = "",
               priority: str | None = None) -> tuple[str, KeyRecord]:
        plaintext, record = issue_key(tenant, user, description, priority)
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
        if not raw:
            return None
        return parse_records({key_id: raw})[0].get(key_id)

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
        plaintext, record = self.create(old.tenant, old.user, old.description or f"rotated from {key_id}",
                                        old.priority)
        self.revoke(key_id)
        return plaintext, record

    def verify(self, presented: str) -> Principal | None:
        return verify(presented, self._records())


class KeyCache:
    """Router-side copy of the key records that is never trusted beyond `staleness_s`.

    `clock` is monotonic seconds (injectable for tests); `confirm_s` is how often the
    change counter is read, and bounds every store read of the cache.
    """

    def __init__(self, client, keys: StoreKeyspace, *, reload_s: float = 30.0, staleness_s: float = 5.0,
                 confirm_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._r = client
        self._k = keys
        self._reload_s = reload_s
        self._staleness_s = staleness_s
        self._confirm_s = confirm_s
        self._clock = clock
        self._records: dict[str, KeyRecord] = {}
        self._version: int | None = None
        self._reported: set[str] = set()
        self.loaded_at = float("-inf")
        self.confirmed_at = float("-inf")  # when the store last vouched for the records

    async def load(self) -> None:
        """Read every record and the change counter in one command."""
        started = self._clock()
        raw = await asyncio.wait_for(self._r.hgetall(self._k.api_keys), self._confirm_s)
        self._records, self._version = parse_records(raw, reported=self._reported)
        self.loaded_at = self.confirmed_at = started

    async def confirm(self) -> None:
        """Read the change counter; reload when it moved, else the copy is confirmed."""
        started = self._clock()
        raw = await asyncio.wait_for(self._r.hget(self._k.api_keys, KEYS_VERSION_FIELD), self._confirm_s)
        try:
            version = int(raw or 0)
        except ValueError:
            version = -1  # unreadable counter: never equal, so every round reloads
        if version != self._version or version < 0:
            await self.load()
        else:
            self.confirmed_at = started

    @property
    def age_s(self) -> float:
        """Seconds since the store last confirmed the records (inf before the first load)."""
        return self._clock() - self.confirmed_at

    def authenticate(self, presented: str) -> Principal | None:
        """The key's principal, None for a wrong, revoked or malformed key.

        Raises KeysUnconfirmed for a well-formed key when the records are older than the
        staleness bound: the cache cannot tell whether that key was revoked meanwhile.
        """
        if split_key(presented) is None:
            return None
        if self.age_s > self._staleness_s:
            raise KeysUnconfirmed(
                "API keys cannot be checked right now: the key store has not been reachable for "
                f"more than {self._staleness_s:g} s"
            )
        return verify(presented, self._records)

    async def watch(self) -> None:
        """Background task: reload on change messages, confirm every `confirm_s`, reconnect."""
        while True:
            pubsub = None
            try:
                # a cluster client learns the slot map on its first command; pub/sub needs it
                await asyncio.wait_for(self._r.initialize(), self._confirm_s)
                pubsub = self._r.pubsub()
                await asyncio.wait_for(pubsub.subscribe(self._k.api_keys_changed), self._confirm_s)
                await self.load()  # anything changed while we were not subscribed
                await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("key store unreachable (%s: %s); %d cached keys, confirmed %.1f s ago",
                               type(exc).__name__, exc, len(self._records), self.age_s)
                await asyncio.sleep(min(1.0, self._confirm_s))
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception:
                        pass

    async def _follow(self, pubsub) -> None:
        next_confirm = self._clock() + self._confirm_s
        while True:
            # short waits: a message is acted on within 0.2 s, the counter read on time
            wait = max(0.0, min(0.2, next_confirm - self._clock()))
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            now = self._clock()
            if msg is not None or now - self.loaded_at > self._reload_s:
                await self.load()
                next_confirm = now + self._confirm_s
            elif now >= next_confirm:
                await self.confirm()
                next_confirm = now + self._confirm_s


def ensure_dev_key(admin: KeyAdmin, *, tenant: str, key_path) -> bool:
    """Issue the development key on first start; keep it while the store still accepts it.

    The plaintext goes to `key_path` (mode 0600). Returns True when a key was issued now.
    """
    from pathlib import Path

    from serving.api_keys import write_private

    key_path = Path(key_path)
    if key_path.is_file():
        existing = key_path.read_text(encoding="utf-8").strip()
        principal = admin.verify(existing)
        if principal is not None and principal.tenant == tenant:
            return False
    plaintext, _ = admin.create(tenant, "developer", description="development key (govllm serve)")
    write_private(key_path, plaintext + "\n")
    return True
