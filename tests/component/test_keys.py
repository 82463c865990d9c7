"""API keys: hashed at rest, managed in the shared store (a Redis and a Redis Cluster), revoked
everywhere at once, never trusted longer than the staleness bound."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time

import pytest

from serving.api_keys import KeyRecord, issue_key, split_key, verify
from serving.store import KEYS_VERSION_FIELD, StoreKeyspace, async_client, sync_client
from serving.tenancy.keystore import KeyAdmin, KeyCache, KeysUnconfirmed, ensure_dev_key
from tests.servers import paused


@pytest.fixture
def store(store_server):
    settings = store_server.settings(f"k{time.time_ns()}")
    return settings, StoreKeyspace(settings.namespace)


async def until(predicate, limit_s: float) -> float:
    """Seconds until `predicate()` holds; fails the test after `limit_s`."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < limit_s, f"condition not reached within {limit_s} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


def accepts(cache: KeyCache, key: str) -> bool | None:
    """True/False as the cache decides, None when it refuses to decide (unconfirmed)."""
    try:
        return cache.authenticate(key) is not None
    except KeysUnconfirmed:
        return None


def test_issued_key_verifies_and_plaintext_is_not_stored(store):
    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    key, record = admin.create("agency-a", "alice")
    assert split_key(key) is not None
    principal = admin.verify(key)
    assert principal and principal.tenant == "agency-a" and principal.user == "alice"
    assert principal.credential_id == record.key_id
    raw = sync_client(settings).hgetall(keys.api_keys)
    assert all(key.split("_", 2)[2].encode() not in v for v in raw.values())
    assert "digest" not in record.public() and "salt" not in record.public()


def test_wrong_revoked_and_malformed_keys_fail():
    key, record = issue_key("t", "u")
    records = {record.key_id: record}
    assert verify(key[:-1] + ("A" if key[-1] != "A" else "B"), records) is None
    assert verify("gvk_000000000000_secret", records) is None
    for garbage in ["", "Bearer", "gvk", "gvk__", "sk-123", key.replace("gvk", "xyz"), "gvk_short_abc"]:
        assert verify(garbage, records) is None
    record.revoked_at = time.time()
    assert verify(key, records) is None


@pytest.mark.parametrize("damage", [
    "{not json", "[]", '{"key_id": "x"}',
    {"digest": 5}, {"salt": "zz"}, {"digest": "ä" * 64}, {"created_at": True}, {"extra": 1},
])
def test_damaged_records_are_refused_by_the_parser(damage):
    _, record = issue_key("t", "u")
    text = damage if isinstance(damage, str) else json.dumps({**json.loads(record.to_json()), **damage})
    with pytest.raises(ValueError):
        KeyRecord.from_json(text)


def test_list_rotate_revoke(store):
    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    k1, r1 = admin.create("a", "app-1")
    _, r2 = admin.create("b", "app-2")
    assert [r.key_id for r in admin.list()] == [r1.key_id, r2.key_id]
    assert [r.key_id for r in admin.list(tenant="b")] == [r2.key_id]
    k3, r3 = admin.rotate(r1.key_id)
    assert admin.verify(k1) is None and admin.verify(k3).tenant == "a" and r3.user == "app-1"
    assert r1.key_id not in [r.key_id for r in admin.list()]
    assert r1.key_id in [r.key_id for r in admin.list(include_revoked=True)]
    with pytest.raises(KeyError):
        admin.revoke("000000000000")
    # every change was counted with the record, in the same hash (one slot on a cluster)
    assert int(sync_client(settings).hget(keys.api_keys, KEYS_VERSION_FIELD)) == 4  # two creates, a rotation (create + revoke)


def test_revocation_reaches_router_caches_at_once(store):
    """Two router replicas' caches; a revoke must fail the key on both within a second."""
    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    key, record = admin.create("a", "u")

    async def go():
        caches = [KeyCache(async_client(settings), keys) for _ in range(2)]
        tasks = [asyncio.create_task(c.watch()) for c in caches]
        await until(lambda: all(accepts(c, key) for c in caches), 5.0)
        new_key, _ = await asyncio.to_thread(admin.create, "b", "v")  # a new key appears too
        await asyncio.to_thread(admin.revoke, record.key_id)
        took = await until(lambda: not any(accepts(c, key) for c in caches)
                           and all(accepts(c, new_key) for c in caches), 1.0)
        for t in tasks:
            t.cancel()
        return took

    assert asyncio.run(go()) < 1.0


def test_a_lost_change_message_is_caught_by_the_change_counter(store):
    """A change whose announcement never arrived (publisher died after the write)."""
    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    key, record = admin.create("a", "u")

    async def go():
        cache = KeyCache(async_client(settings), keys, confirm_s=0.5)
        task = asyncio.create_task(cache.watch())
        await until(lambda: accepts(cache, key), 5.0)
        record.revoked_at = time.time()
        pipe = sync_client(settings).pipeline(transaction=True)  # the admin's write, minus PUBLISH
        pipe.hset(keys.api_keys, record.key_id, record.to_json())
        pipe.hincrby(keys.api_keys, KEYS_VERSION_FIELD, 1)
        await asyncio.to_thread(pipe.execute)
        took = await until(lambda: accepts(cache, key) is False, 2.0)
        task.cancel()
        return took

    assert asyncio.run(go()) < 2.0


def test_one_damaged_record_neither_freezes_the_cache_nor_leaks_into_logs(store, caplog):
    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    key, record = admin.create("a", "u")
    damaged = record.to_json().replace('"created_at"', '"made_at"')  # salt and digest still in it
    sync_client(settings).hset(keys.api_keys, "bad0bad0bad0", damaged)

    async def go():
        cache = KeyCache(async_client(settings), keys)
        task = asyncio.create_task(cache.watch())
        await until(lambda: accepts(cache, key), 5.0)
        await asyncio.to_thread(admin.revoke, record.key_id)  # later changes still reach the cache
        await until(lambda: accepts(cache, key) is False, 1.0)
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="govllm.keys"):
        asyncio.run(go())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "bad0bad0bad0" in logged
    assert record.salt not in logged and record.digest not in logged
    assert logged.count("bad0bad0bad0") == 1  # once per cache, not on every reload
    assert [r.key_id for r in admin.list(include_revoked=True)] == [record.key_id]


def test_unconfirmed_cache_refuses_to_decide_until_the_store_answers(store_server, store):
    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    key, _ = admin.create("a", "u")

    async def go():
        cache = KeyCache(async_client(settings), keys, staleness_s=1.0, confirm_s=0.25)
        before_load = accepts(cache, key)
        task = asyncio.create_task(cache.watch())
        await until(lambda: accepts(cache, key), 5.0)
        with paused(*store_server.pids):
            took = await until(lambda: accepts(cache, key) is None, 3.0)
            malformed = cache.authenticate("not-a-key")
        back = await until(lambda: accepts(cache, key), 5.0)
        task.cancel()
        return before_load, took, malformed, back

    before_load, took, malformed, back = asyncio.run(go())
    assert before_load is None  # nothing confirmed yet: no key is trusted
    # the staleness bound (1 s) counted from the last confirmation, at most 0.25 s before the pause
    assert 0.7 <= took <= 1.5
    assert malformed is None  # not a key at all: 401 whatever the store does
    assert back < 5.0


def test_cache_follows_changes_after_the_store_restarts(store_server, store):
    """The subscription dies with the store; the cache must resubscribe, not go deaf."""
    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    key, record = admin.create("a", "u")

    async def go():
        cache = KeyCache(async_client(settings), keys, reload_s=3600)
        task = asyncio.create_task(cache.watch())
        await until(lambda: accepts(cache, key), 5.0)
        await asyncio.to_thread(store_server.restart)
        await until(lambda: accepts(cache, key), 10.0)  # confirmed again
        await asyncio.to_thread(admin.revoke, record.key_id)
        took = await until(lambda: accepts(cache, key) is False, 2.0)
        task.cancel()
        return took

    assert asyncio.run(go()) < 2.0


def test_dev_key_issued_once_with_private_mode(store, tmp_path):
    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    path = tmp_path / "state" / "dev-api-key"
    assert ensure_dev_key(admin, tenant="dev-local", key_path=path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert admin.verify(key).tenant == "dev-local"
    assert ensure_dev_key(admin, tenant="dev-local", key_path=path) is False
    assert path.read_text().strip() == key
    admin.revoke(split_key(key)[0])  # revoked: a new one is issued
    assert ensure_dev_key(admin, tenant="dev-local", key_path=path) is True
    assert path.read_text().strip() != key


def test_router_confirms_a_stale_copy_once_before_refusing(store_server, store):
    """After a pause (no background confirmation for a while) the Authenticate step asks the
    store once and accepts a good key; only when the store cannot answer does it refuse (503)."""
    from serving.config import ServingConfig, TenantSettings
    from serving.request import APIError, RequestContext
    from serving.router.pipeline import Authenticate

    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    key, _ = admin.create("a", "u")
    config = ServingConfig(models=({"id": "m", "max_model_len": 16},),
                           tenants=(TenantSettings(id="a", name="A", kind="agency"),))

    def ctx() -> RequestContext:
        return RequestContext(request_id="r", operation="chat",
                              scope={"headers": [(b"authorization", f"Bearer {key}".encode())]})

    async def go():
        cache = KeyCache(async_client(settings), keys, staleness_s=0.3, confirm_s=0.25)
        await cache.load()
        step = Authenticate(config, keys=cache)
        await asyncio.sleep(0.5)  # stale: nobody confirmed it (no watch task running)
        assert accepts(cache, key) is None
        fresh = ctx()
        await step(fresh)
        with paused(*store_server.pids):
            await asyncio.sleep(0.5)
            with pytest.raises(APIError) as refused:
                await step(ctx())
        return fresh, refused.value

    fresh, refused = asyncio.run(go())
    assert fresh.principal.tenant == "a"
    assert refused.status == 503 and refused.code == "key_store_unavailable"
    assert refused.headers["Retry-After"] == "2"
