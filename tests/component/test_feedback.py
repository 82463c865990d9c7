"""/v1/feedback against a real Redis and a real Redis Cluster, with a real audit trail: only the
tenant that made a request can rate it, each user once, and a rating is an audit record."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta

import pytest

from serving.audit.crypto import LocalKeyFileKeys
from serving.audit.objectstore import TOKYO, DirectoryStore
from serving.audit.trail import AuditTrail
from serving.audit.verify import walk
from serving.config import (
    AuditSettings,
    DirectorySink,
    LocalKeyFile,
    ModelRoute,
    ServingConfig,
    TenantSettings,
)
from serving.request import APIError, Principal, RequestContext
from serving.router.feedback import FeedbackEndpoint
from serving.store import StoreKeyspace, async_client, sync_client
from serving.tenancy.quota import QuotaLedger
from serving.tenancy.reports import feedback_summary
from tests.servers import paused

MODEL = ModelRoute(id="m", max_model_len=1000)
CITY = TenantSettings(id="city", name="市", kind="municipality")
TOWN = TenantSettings(id="town", name="町", kind="municipality")


@pytest.fixture
def cfg(store_server) -> ServingConfig:
    # a generous store timeout: on a loaded 2-core host a cluster client's first burst can take
    # more than 0.5 s (the store-down test pauses the store, so any bound is reached)
    return ServingConfig(models=(MODEL,), tenants=(CITY, TOWN),
                         store=store_server.settings(f"f{time.time_ns()}", timeout_s=2.0))


def audit_settings(tmp_path) -> AuditSettings:
    return AuditSettings(spool_dir=str(tmp_path / "spool"), sink=DirectorySink(path=str(tmp_path / "archive")),
                         keys=LocalKeyFile(path=str(tmp_path / "audit.key")), batch_max_s=0.2)


def audit_records(tmp_path) -> list[dict]:
    now = datetime.now(TOKYO)
    store = DirectoryStore(DirectorySink(path=str(tmp_path / "archive")))
    report, records = walk(store, LocalKeyFileKeys(tmp_path / "audit.key"),
                           now - timedelta(hours=1), now + timedelta(hours=1))
    assert report.ok, report.as_dict()
    return [r for r in records if r.get("type") == "feedback"]


def endpoint(cfg: ServingConfig, audit=None) -> FeedbackEndpoint:
    return FeedbackEndpoint(async_client(cfg.store), StoreKeyspace(cfg.store.namespace), audit=audit)


async def answered(cfg: ServingConfig, tenant: TenantSettings, *, model: ModelRoute | None = MODEL) -> str:
    """Settle a request of `tenant` as the router does when it ends; returns its request id."""
    ledger = QuotaLedger(cfg, async_client(cfg.store), StoreKeyspace(cfg.store.namespace))
    c = RequestContext(request_id=uuid.uuid4().hex, operation="chat", scope={"headers": []})
    c.tenant, c.model, c.usage = tenant, model, {"prompt_tokens": 3, "completion_tokens": 4}
    await ledger.settle(c)
    assert ledger.deferred == 0
    return c.request_id


async def rate(ep: FeedbackEndpoint, tenant: TenantSettings, user: str, request_id: str,
               rating: int = 1) -> dict | APIError:
    c = RequestContext(request_id=uuid.uuid4().hex, operation="feedback", scope={"headers": []},
                       raw_body=json.dumps({"request_id": request_id, "rating": rating,
                                            "comment": "役に立った"}).encode())
    c.tenant, c.principal = tenant, Principal(tenant=tenant.id, user=user)
    try:
        return await asyncio.wait_for(ep(c), 10)  # a hung store or trail fails the test, not the run
    except APIError as exc:
        return exc


def counts(cfg: ServingConfig) -> dict:
    (row,) = feedback_summary(sync_client(cfg.store), StoreKeyspace(cfg.store.namespace), ["m"])
    return row


def test_each_user_of_the_tenant_rates_once_and_other_tenants_see_nothing(cfg, tmp_path):
    trail = AuditTrail(audit_settings(tmp_path), app="t")

    async def go():
        ep = endpoint(cfg, trail)
        rid = await answered(cfg, CITY)
        return (await rate(ep, CITY, "alice", rid, 1), await rate(ep, CITY, "alice", rid, -1),
                await rate(ep, CITY, "bob", rid, -1), await rate(ep, TOWN, "carol", rid, 1),
                await rate(ep, TOWN, "carol", "no-such-request", 1), rid)

    try:
        first, again, bob, other_tenant, unknown, rid = asyncio.run(go())
    finally:
        trail.close()
    assert first["model"] == "m" and first["rating"] == 1 and first["request_id"] == rid
    assert isinstance(again, APIError) and again.status == 409 and again.code == "feedback_already_given"
    assert bob["rating"] == -1
    assert isinstance(other_tenant, APIError) and other_tenant.status == 404
    assert other_tenant.code == unknown.code == "request_not_found"
    assert other_tenant.message.replace(rid, "X") == unknown.message.replace("no-such-request", "X")
    assert counts(cfg) == {"model": "m", "up": 1, "down": 1, "satisfaction": 0.5}
    records = audit_records(tmp_path)
    assert sorted((r["user"], r["rating"], r["rated_request_id"]) for r in records) == [
        ("alice", 1, rid), ("bob", -1, rid)]
    assert all(r["tenant"] == "city" and r["model_id"] == "m" for r in records)


def test_concurrent_ratings_by_one_user_on_two_replicas_count_once(cfg):
    async def go():
        replicas = [endpoint(cfg), endpoint(cfg)]
        rid = await answered(cfg, CITY)
        return await asyncio.gather(*(rate(replicas[i % 2], CITY, "alice", rid) for i in range(10)))

    results = asyncio.run(go())
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all(r.code == "feedback_already_given" for r in results if isinstance(r, APIError))
    assert counts(cfg)["up"] == 1


def test_a_rating_the_audit_trail_could_not_take_can_be_given_again(cfg, tmp_path):
    broken = AuditTrail(audit_settings(tmp_path / "broken"), app="t")
    broken.close()  # a spool that takes no more records

    async def go():
        rid = await answered(cfg, CITY)
        refused = await rate(endpoint(cfg, broken), CITY, "alice", rid)
        return refused, await rate(endpoint(cfg), CITY, "alice", rid)

    refused, retried = asyncio.run(go())
    assert isinstance(refused, APIError) and refused.code == "audit_unavailable"
    assert isinstance(retried, dict) and counts(cfg)["up"] == 1


def test_a_request_no_model_answered_cannot_be_rated(cfg):
    async def go():
        rid = await answered(cfg, CITY, model=None)
        return await rate(endpoint(cfg), CITY, "alice", rid)

    result = asyncio.run(go())
    assert isinstance(result, APIError) and result.code == "request_not_found"


def test_store_down_answers_503(cfg, store_server):
    async def go():
        rid, later = await answered(cfg, CITY), await answered(cfg, CITY)
        ep = endpoint(cfg)
        with paused(*store_server.pids):
            down = await rate(ep, CITY, "alice", rid)
        return down, await rate(ep, CITY, "alice", later)  # the same client works again

    down, after = asyncio.run(go())
    assert isinstance(down, APIError) and down.status == 503 and down.code == "feedback_store_unavailable"
    assert isinstance(after, dict)
