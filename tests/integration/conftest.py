"""One real stack per test session: `govllm serve` with real Ray and vLLM-CPU engines.

The stack runs the embedded default spec with its own state directory and a
free port, exactly as an operator would start it (the console script in a
subprocess). Teardown sends SIGINT like Ctrl-C and fails the run unless the
command exits 0 and every process it started (Ray, replicas, engines,
HAProxy) is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from cluster.spec import DEFAULT_SPEC_PATH
from govllm.runtime_env import free_port, haproxy_dir
from tests.servers import AWS_ENV, Issuer, start_moto

READY_TIMEOUT_S = 480
STOP_TIMEOUT_S = 120
GOVLLM = str(Path(sys.executable).with_name("govllm"))


@dataclass
class Stack:
    base_url: str
    api_key: str
    state_dir: Path
    spec_path: Path
    proc: subprocess.Popen
    log_path: Path
    _endpoints: dict | None = None

    @property
    def run_info(self) -> dict:
        return json.loads((self.state_dir / "run" / "serve.json").read_text())

    def status(self) -> dict:
        out = subprocess.run(
            [GOVLLM, "status", "--json", "--spec", str(self.spec_path)],
            capture_output=True, text=True, timeout=120, check=True,
        )
        return json.loads(out.stdout)

    def engine_metric(self, model: str, name: str) -> float:
        """A vLLM Prometheus series summed over the model's replicas (their data-plane /metrics)."""
        total = 0.0
        if self._endpoints is None:
            self._endpoints = self.status()["endpoints"]
        for endpoint in self._endpoints[model]:
            with urllib.request.urlopen(endpoint["url"] + "/metrics", timeout=10) as resp:
                for line in resp.read().decode().splitlines():
                    if not line.startswith(name + "{"):
                        continue
                    total += float(line.rsplit(" ", 1)[1])
        return total

    @property
    def store_pid(self) -> int:
        """The embedded Redis started by `govllm serve`."""
        port = str(yaml.safe_load(self.spec_path.read_text())["store"]["port"])
        for p in psutil.process_iter(["cmdline"]):
            # Redis rewrites its process title to "redis-server 127.0.0.1:<port>"
            title = " ".join(p.info["cmdline"] or [])
            if "redis-server" in title and f":{port}" in title:
                return p.pid
        raise RuntimeError("embedded Redis not found")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([GOVLLM, *args, "--spec", str(self.spec_path)], capture_output=True,
                              text=True, timeout=120, check=check)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if stack.proc.poll() is not None:
            pytest.fail(f"govllm serve exited with {stack.proc.returncode}:\n{stack.log_tail()}")
        if (stack.state_dir / "run" / "serve.json").exists():
            try:
                with urllib.request.urlopen(stack.base_url + "/readyz", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
        time.sleep(1)
    pytest.fail(f"stack not ready after {READY_TIMEOUT_S}s:\n{stack.log_tail()}")


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
]


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def stack(tmp_path_factory, outside) -> Stack:
    root = tmp_path_factory.mktemp("stack")
    state_dir = root / "state"
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    port = free_port()
    spec["state_dir"] = str(state_dir)
    spec["router"].update(port=port, min_replicas=2, max_replicas=2)
    spec["store"] = {"embedded": True, "port": free_port()}
    spec["tenants"] += TEST_TENANTS
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
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    log_path = root / "serve.log"
    env = dict(os.environ)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [GOVLLM, "serve", "--spec", str(spec_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
        )
    s = Stack(f"http://127.0.0.1:{port}", "", state_dir, spec_path, proc, log_path)
    try:
        _wait_ready(s)
        s.api_key = (state_dir / "dev-api-key").read_text().strip()
        descendants = psutil.Process(proc.pid).children(recursive=True)
        yield s
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"govllm serve did not stop within {STOP_TIMEOUT_S}s:\n{s.log_tail()}")
    marker = str(haproxy_dir(state_dir / "run"))
    for p in psutil.process_iter(["cmdline"]):
        if p.info["cmdline"] and any(marker in part for part in p.info["cmdline"]):
            descendants.append(p)
    _, alive = psutil.wait_procs(descendants, timeout=30)
    survivors = [f"{p.pid} {p.name()}" for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert rc == 0, f"govllm serve exited with {rc}:\n{s.log_tail()}"
    assert not survivors, f"processes left behind after Ctrl-C: {survivors}"
    assert not (state_dir / "run" / "serve.json").exists()


@pytest.fixture(scope="session")
def client(stack):
    from openai import OpenAI

    return OpenAI(base_url=stack.base_url + "/v1", api_key=stack.api_key, max_retries=0, timeout=120)
