"""The fault suite's own stack: the embedded default with tight timeouts, small admission bounds,
two router replicas, an S3/KMS archive that can be stopped, and an audit spool on a small tmpfs
that can be filled.

Its tests kill, stop and starve the real processes (engines, router replicas, Redis, the S3
server, the spool's disk) in the middle of real traffic and then check the promises: every
request on the audit trail exactly once, the ledger equal to the tokens delivered, no
reservation left, nothing reaching an engine without the router, failover within seconds.
Files run in name order; the ones that leave a replica restarting (router and engine kills)
come last. docs/reliability.md is the fault matrix these tests prove.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.spec.schema import DEFAULT_SPEC_PATH
from govllm.runtime_env import free_port
from tests import stack as stacks
from tests.servers import AWS_ENV, start_moto
from tests.vendor import server as vendor_servers

#: The model flooded by the admission tests: 4 slots per replica, shared by 2 routers.
FLOODED = "tiny-qwen2-ja"
#: The model most other faults use: room for a few hundred concurrent streams.
WORKHORSE = "tiny-llama-ja"
SPOOL_TMPFS_MB = 48
#: Vendor-hosted models, all served by one vendor server (tests/vendor/server.py): the default
#: kind (usage at the end only), a metered one (contract RPM/TPM) and one with a wrong key.
VENDOR = "plamo-2"
VENDOR_METERED = "plamo-2-metered"
VENDOR_BADKEY = "plamo-2-badkey"
VENDOR_KEY_ENV = "GOVLLM_TEST_VENDOR_KEY"
VENDOR_BADKEY_ENV = "GOVLLM_TEST_VENDOR_BADKEY"
VENDOR_PRICE = {"input_yen_per_million": 150.0, "output_yen_per_million": 600.0}
VENDOR_RPM = 6
VENDOR_TPM = 3000

FAULT_TENANTS = [
    {"id": "fault-bill", "name": "課金検証町", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"monthly_token_budget": 50_000_000}},
    {"id": "fault-store", "name": "障害検証市", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"monthly_token_budget": 50_000_000}},
    {"id": "fault-flood", "name": "洪水市", "kind": "municipality", "max_confidentiality": 1},
    {"id": "fault-quiet", "name": "静穏町", "kind": "municipality", "max_confidentiality": 1},
    {"id": "fault-agency", "name": "検証省", "kind": "agency", "max_confidentiality": 2},
]


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    """A small filesystem for the spool, so a test can fill it; False where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                         capture_output=True, text=True)
    return out.returncode == 0


@pytest.fixture(scope="package")
def archive():
    """S3 and KMS (moto, separate processes so each can fail alone) for the audit archive."""
    for key, value in AWS_ENV.items():
        os.environ.setdefault(key, value)
    s3_server, kms_server = start_moto(), start_moto()
    s3 = s3_server.client("s3")
    s3.create_bucket(Bucket="fault-audit",
                     CreateBucketConfiguration={"LocationConstraint": "ap-northeast-1"})
    key_id = kms_server.client("kms").create_key(Description="govllm fault suite")["KeyMetadata"]["KeyId"]
    yield {"s3": s3_server, "kms": kms_server, "kms_key_id": key_id}
    s3_server.stop()
    kms_server.stop()


def _vendor_models(vendor: vendor_servers.VendorServer) -> list[dict]:
    def endpoint(**extra) -> dict:
        return {"base_url": vendor.base_url, "upstream_model": vendor.model_name,
                "credential_env": VENDOR_KEY_ENV, "ca_bundle": str(vendor.ca_bundle),
                "probe_interval_s": 1, "open_s": 2, "first_byte_timeout_s": 20,
                "terms": {"provider": "試験ベンダー株式会社", "contract": "TEST-2026-001",
                          "retention_days": 0, "data_location": "JP"}, **extra}

    return [
        {"id": VENDOR, "max_model_len": 2048, "max_confidentiality": 2, "price": VENDOR_PRICE,
         "source": {"endpoint": endpoint(limits={"max_concurrency": 64})}},
        {"id": VENDOR_METERED, "max_model_len": 2048, "price": VENDOR_PRICE,
         "source": {"endpoint": endpoint(stream_usage="per_chunk", limits={
             "max_concurrency": 8, "requests_per_minute": VENDOR_RPM, "tokens_per_minute": VENDOR_TPM})}},
        {"id": VENDOR_BADKEY, "max_model_len": 2048,
         "source": {"endpoint": endpoint(credential_env=VENDOR_BADKEY_ENV)}},
    ]


@pytest.fixture(scope="package")
def vendor_server(tmp_path_factory):
    """The vendor's server, started (not waited for) before the stack so both start together."""
    vendor = vendor_servers.prepare(tmp_path_factory.mktemp("vendor"))
    os.environ[VENDOR_KEY_ENV] = vendor.api_key
    os.environ[VENDOR_BADKEY_ENV] = "not-the-vendor-key-" + os.urandom(6).hex()
    vendor.start()
    try:
        yield vendor
    finally:
        vendor.stop()


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory, archive, vendor_server):
    root = tmp_path_factory.mktemp("faults")
    spool = root / "spool"
    tmpfs = _mount_tmpfs(spool, SPOOL_TMPFS_MB)
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    spec["state_dir"] = str(root / "state")
    spec["router"].update(
        port=free_port(), min_replicas=2, max_replicas=2,
        request_header_timeout_s=5, request_body_timeout_s=2,
        upstream_first_byte_timeout_s=4, stream_idle_timeout_s=3,
        max_queue_wait_s=6, replica_probe_interval_s=0.5, replica_eject_s=2, engine_stall_s=5,
        client_send_timeout_s=8,
        # no slot kept for quiet tenants: the admission tests count slots exactly (2 per router);
        # the headroom itself is tested in tests/unit/test_admission.py and measured by
        # loadtest/bench_fairness.py
        fair_headroom=0,
    )
    for model in spec["models"]:
        model["replicas"] = ({"max_ongoing_requests": 4, "max_queued_requests": 2}
                             if model["id"] == FLOODED else
                             {"max_ongoing_requests": 256, "max_queued_requests": 256})
    # chat models only: the faults are about chat traffic, and each extra engine costs the
    # 2-core host start time and memory that the flood and timing tests feel
    spec["models"] = [m for m in spec["models"] if m.get("kind", "chat") == "chat"]
    spec["models"] += _vendor_models(vendor_server)
    spec["aliases"] = {**spec.get("aliases", {}), "plamo-first": [VENDOR, FLOODED]}
    spec["store"] = {"embedded": True, "port": free_port()}
    spec["auth"]["key_staleness_s"] = 3
    spec["tenants"] += FAULT_TENANTS
    spec["audit"] = {
        "enabled": True,
        "batch_max_s": 0.5,
        "spool_dir": str(spool),
        "sink": {"type": "s3", "bucket": "fault-audit", "endpoint_url": archive["s3"].url,
                 "sse_kms_key_id": archive["kms_key_id"]},
        "keys": {"type": "kms", "key_id": archive["kms_key_id"], "endpoint_url": archive["kms"].url},
    }
    stack = stacks.start(root, spec)
    stack.spool_dir, stack.spool_tmpfs = spool, tmpfs
    stack.initial_router_pids = stack.replica_pids("router")
    try:
        yield stack
    finally:
        try:
            stacks.stop(stack)
        finally:
            if tmpfs:
                subprocess.run(["umount", "-l", str(spool)], check=False)


@pytest.fixture(autouse=True)
def recovered(request):
    """Each test starts from a serving stack: the previous one may have left a store or a replica
    recovering (a key cache reconfirming, a replica readmitted after its ejection time)."""
    if "fault_stack" not in request.fixturenames:
        return
    stack = request.getfixturevalue("fault_stack")
    import httpx

    from tests.faults.clients import routers_up, wait_until

    # every self-hosted chat model itself, not only the alias (which a fallback model can answer
    # while the previous test's killed engine is still restarting)
    chat_models = [m["id"] for m in stack.spec["models"] if m.get("kind", "chat") == "chat"
                   and "endpoint" not in m.get("source", {})]

    def serving() -> bool:
        for model in ["default", *chat_models] * 2:  # spread over both router replicas
            resp = httpx.post(stack.base_url + "/v1/chat/completions", timeout=30,
                              headers={"Authorization": f"Bearer {stack.api_key}"},
                              json={"model": model, "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "準備"}]})
            if resp.status_code != 200:
                return False
        return True

    wait_until(serving, timeout_s=90, interval_s=0.5, what="stack serving before the test")
    # and both router replicas back in HAProxy's rotation (a router stopped or killed by the
    # previous test is re-added by health checks only after a few passes)
    routers = stack.spec["router"]["min_replicas"]
    wait_until(lambda: routers_up(stack) >= routers, timeout_s=90, interval_s=0.5,
               what=f"{routers} routers in HAProxy's rotation before the test")


@pytest.fixture(scope="package")
def vendor(vendor_server, fault_stack):
    """The vendor's server once it answers (it started with the stack)."""
    vendor_server.wait_ready()
    return vendor_server


@pytest.fixture(scope="package")
def openai_client(fault_stack):
    from openai import OpenAI

    return OpenAI(base_url=fault_stack.base_url + "/v1", api_key=fault_stack.api_key,
                  max_retries=0, timeout=60)
