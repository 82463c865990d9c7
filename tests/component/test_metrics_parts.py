"""The router's metrics parts without Ray: bounded labels, the background sampler's deltas,
budget standing read from a real Redis and Redis Cluster, and the audit spool's backlog from
a real spool. What Ray and Prometheus make of them is tested against the running stack
(tests/integration/test_prometheus.py)."""

from __future__ import annotations

import ast
import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis

from serving.audit.crypto import LocalKeyFileKeys
from serving.audit.objectstore import DirectoryStore
from serving.audit.spool import AuditSpool
from serving.audit.uploader import Uploader
from serving.config import (
    DirectorySink,
    ModelRoute,
    RouterSettings,
    ServingConfig,
    TenantLimits,
    TenantSettings,
)
from serving.request import Principal, RequestContext
from serving.router.admission import Admission
from serving.router.endpoints import EndpointTable
from serving.router.metrics import labels
from serving.router.metrics.budgets import budgeted, read_standing
from serving.router.metrics.sampler import MetricsSampler
from serving.router.metrics.spool_backlog import scan
from serving.store import StoreKeyspace, async_client
from serving.tenancy.quota import QuotaLedger

SERVING = Path(__file__).resolve().parents[2] / "serving"
MODEL = ModelRoute(id="m", max_model_len=1000)
CITY = TenantSettings(id="city", name="市", kind="municipality",
                      limits=TenantLimits(monthly_token_budget=1000))
FREE = TenantSettings(id="agency", name="省", kind="agency")


def _ctx(**fields) -> RequestContext:
    c = RequestContext(request_id=uuid.uuid4().hex, operation="chat", scope={"headers": []})
    for k, v in fields.items():
        setattr(c, k, v)
    return c


# -- labels ------------------------------------------------------------------------------------------
def test_labels_come_from_declared_values_or_collapse():
    assert labels.tenant_label(_ctx(tenant=CITY)) == "city"
    claimed = Principal(tenant="made-up-by-a-token", user="u", method="oidc")
    assert labels.tenant_label(_ctx(principal=claimed)) == labels.UNKNOWN_TENANT
    assert labels.tenant_label(_ctx()) == labels.UNAUTHENTICATED
    # the client's model name is never a label: only the declared model it resolved to
    assert labels.model_label(_ctx(requested_model="anything-a-client-sends")) == labels.NO_MODEL
    assert labels.model_label(_ctx(requested_model="alias", candidates=(MODEL,))) == "m"
    assert labels.code_label("a_vendors_own_code") == labels.OTHER
    assert labels.code_label(None) == labels.NO_ERROR
    assert labels.code_label("monthly_token_budget_exceeded") == "monthly_token_budget_exceeded"
    assert labels.status_label(429) == "429" and labels.status_label(None) == "0"


def _code_literals() -> set[str]:
    """Every error code serving/ can produce: code="..." arguments and "code": "..." items,
    and the quota step's f"{limit}_exceeded" for each limit it names."""
    found: set[str] = set()
    for path in SERVING.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant):
                if isinstance(node.value.value, str):
                    found.add(node.value.value)
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if (isinstance(k, ast.Constant) and k.value == "code" and isinstance(v, ast.Constant)
                            and isinstance(v.value, str)):
                        found.add(v.value)
            if (isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.JoinedStr)
                    and path.name == "quota.py"):
                found |= {f"{limit}_exceeded" for limit in
                          ("requests_per_minute", "tokens_per_minute", "monthly_token_budget")}
    return found - {"jp"}  # the PII settings' country code, not an error code


def test_every_error_code_in_the_code_is_a_label_value():
    missing = _code_literals() - labels.ERROR_CODES
    assert not missing, f"add to serving/router/metrics/labels.py ERROR_CODES: {sorted(missing)}"
    assert len(_code_literals()) > 30  # the scan itself found the codes


# -- the sampler ---------------------------------------------------------------------------------------
class Recorded:
    """RouterMetrics' sampled interface, keeping what it was told (the real one needs Ray)."""

    enabled = True

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args, **kw: self.calls.append((name, args, kw))

    def sums(self, name: str) -> Counter:
        out: Counter = Counter()
        for n, args, _ in self.calls:
            if n == name:
                out[args[:-1]] += args[-1]
        return out


class Dispatcher:
    def __init__(self) -> None:
        self.failovers: Counter = Counter()


def _sampler(metrics, table, admission, dispatcher, **kw) -> MetricsSampler:
    return MetricsSampler(metrics, router="r1", admission=admission, table=table, dispatcher=dispatcher, **kw)


def test_sampler_turns_the_routers_own_counters_into_increments():
    table = EndpointTable()
    table.update({"m": [{"replica_id": "a", "url": "http://a"}, {"replica_id": "b", "url": "http://b"}]})
    admission = Admission([MODEL], RouterSettings(), table)
    dispatcher, metrics = Dispatcher(), Recorded()
    sampler = _sampler(metrics, table, admission, dispatcher)
    a, b = table.by_model["m"]
    table.eject(a, "engine failed", failed=True)
    dispatcher.failovers["m"] += 2
    admission.gates["m"].shed += 3
    table.choices["m", "home"] += 4
    asyncio.run(sampler.sample_once())
    table.readmit(a)
    table.update({"m": [{"replica_id": "a", "url": "http://a"},
                        {"replica_id": "b", "url": "http://b", "ejected_s": 5}]})  # another router's
    dispatcher.failovers["m"] += 1
    asyncio.run(sampler.sample_once())
    asyncio.run(sampler.sample_once())  # nothing new: nothing added
    assert metrics.sums("ejections") == {("m", "self"): 1, ("m", "peer"): 1}
    assert metrics.sums("failovers") == {("m",): 3}
    assert metrics.sums("replica_choices") == {("m", "home"): 4}
    assert metrics.sums("shed") == {("m",): 3}
    states = [kw for n, args, kw in metrics.calls if n == "router_model"]
    assert states[0]["ready"] == 1 and states[1]["ready"] == 1  # a out, then b out
    assert states[0]["slots"] == admission.gates["m"].slots


def test_sampler_reads_the_audit_spool(tmp_path):
    keys = LocalKeyFileKeys(tmp_path / "audit.key")
    spool = AuditSpool(tmp_path / "spool", keys, app="t", batch_max_records=3, batch_max_s=60)
    uploader = Uploader(tmp_path / "spool", DirectoryStore(DirectorySink(path=str(tmp_path / "archive"))), keys,
                        own_chain=spool.chain)

    class Trail:
        pass

    trail = Trail()
    trail.spool, trail.uploader = spool, uploader

    async def write(n: int) -> None:
        await asyncio.gather(*(spool.append({"type": "request", "request_id": f"r{i}"}) for i in range(n)))

    metrics = Recorded()
    sampler = _sampler(metrics, EndpointTable(), Admission([], RouterSettings(), EndpointTable()),
                       Dispatcher(), audit=trail)
    asyncio.run(write(7))  # two sealed segments of 3, one open with 1
    asyncio.run(sampler.sample_once())
    backlog = [kw for n, _, kw in metrics.calls if n == "audit_backlog"][-1]
    assert backlog["spool_bytes"] > 0 and backlog["oldest_age_s"] >= 0
    assert [kw for n, _, kw in metrics.calls if n == "audit_progress"][-1] == {"records": 7, "segments": 0}
    assert uploader.upload_once() == 2
    spool.close()  # seals the open one
    assert uploader.upload_once() == 1
    asyncio.run(sampler.sample_once())
    assert [kw for n, _, kw in metrics.calls if n == "audit_backlog"][-1] == {"oldest_age_s": 0.0, "spool_bytes": 0}
    assert [kw for n, _, kw in metrics.calls if n == "audit_progress"][-1] == {"records": 0, "segments": 3}


def test_backlog_age_is_the_oldest_pending_segments(tmp_path):
    keys = LocalKeyFileKeys(tmp_path / "audit.key")
    first = AuditSpool(tmp_path / "spool", keys, app="t", batch_max_records=1, batch_max_s=60)
    asyncio.run(_append(first, 2))
    first.close()
    time.sleep(0.3)
    second = AuditSpool(tmp_path / "spool", keys, app="t", batch_max_records=1, batch_max_s=60)
    asyncio.run(_append(second, 1))
    second.close()
    now = time.time()
    backlog = scan(tmp_path / "spool", now)
    assert backlog.oldest_age_s >= 0.3  # the first chain's first segment, not the newest
    assert backlog.spool_bytes == sum(p.stat().st_size for p in (tmp_path / "spool").rglob("*.sealed"))
    assert scan(tmp_path / "nothing-here").oldest_age_s == 0.0


async def _append(spool: AuditSpool, n: int) -> None:
    for i in range(n):
        await spool.append({"type": "request", "request_id": f"r{i}"})


# -- budget standing (real Redis, real Redis Cluster) -----------------------------------------------------
def test_standing_counts_settled_tokens_and_open_reservations(store_server):
    cfg = ServingConfig(models=(MODEL,), tenants=(CITY, FREE), store=store_server.settings(f"m{time.time_ns()}"))
    keys = StoreKeyspace(cfg.store.namespace)

    async def go():
        client = async_client(cfg.store)
        ledger = QuotaLedger(cfg, client, keys)
        contexts = []
        for max_tokens in (50, 70):
            c = _ctx(tenant=CITY, candidates=(MODEL,), raw_body=b"x" * 40,
                     payload={"model": "m", "max_tokens": max_tokens}, confidentiality=1)
            await ledger(c)
            contexts.append(c)
        held = sum(c.reserved_tokens for c in contexts)
        contexts[0].model, contexts[0].usage = MODEL, {"prompt_tokens": 11, "completion_tokens": 9}
        await ledger.settle(contexts[0])
        standing = await read_standing(client, keys, budgeted(cfg.tenants), time.time())
        none = await read_standing(client, keys, [], time.time())  # a ping
        await client.aclose()
        return standing, none, held - contexts[0].reserved_tokens

    (standing,), none, open_tokens = asyncio.run(go())
    assert none == []
    assert (standing.tenant, standing.used, standing.limit) == ("city", 20, 1000)
    assert standing.reservations == 1 and standing.reserved == open_tokens > 0


def test_standing_of_an_unreachable_store_raises():
    cfg = ServingConfig(models=(MODEL,), tenants=(CITY,))
    settings = cfg.store.model_copy(update={"url": "redis://127.0.0.1:1/0", "timeout_s": 0.5})
    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(read_standing(async_client(settings), StoreKeyspace("x"), [CITY], time.time()))
