"""API keys: hashed at rest, managed in the shared store, revoked everywhere at once."""

from __future__ import annotations

import asyncio
import stat
import time

import pytest

from serving.config import StoreSettings
from serving.keys import issue_key, split_key, verify
from serving.tenancy.keystore import KeyAdmin, KeyCache, ensure_dev_key
from serving.tenancy.store import StoreKeys, async_client, sync_client
from tests.servers import start_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def store(redis_server):
    settings = StoreSettings(url=redis_server.url, namespace=f"k{time.time_ns()}")
    return settings, StoreKeys(settings.namespace)


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


def test_revocation_reaches_router_caches_at_once(store):
    """Two router replicas' caches; a revoke must fail the key on both within a second."""
    settings, keys = store
    admin = KeyAdmin(sync_client(settings), keys)
    key, record = admin.create("a", "u")

    async def go():
        caches = [KeyCache(async_client(settings), keys) for _ in range(2)]
        tasks = [asyncio.create_task(c.watch()) for c in caches]
        await asyncio.sleep(0.5)
        before = [c.authenticate(key) is not None for c in caches]
        new_key, _ = await asyncio.to_thread(admin.create, "b", "v")  # a new key appears too
        await asyncio.to_thread(admin.revoke, record.key_id)
        t0 = time.monotonic()
        while any(c.authenticate(key) for c in caches) or not all(c.authenticate(new_key) for c in caches):
            assert time.monotonic() - t0 < 1.0, "caches did not see the change within 1 s"
            await asyncio.sleep(0.01)
        for t in tasks:
            t.cancel()
        return before, time.monotonic() - t0

    before, took = asyncio.run(go())
    assert before == [True, True] and took < 1.0


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
