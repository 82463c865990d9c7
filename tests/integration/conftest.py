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
import socket
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
from govllm.runtime_env import haproxy_dir

READY_TIMEOUT_S = 480
STOP_TIMEOUT_S = 120
GOVLLM = str(Path(sys.executable).with_name("govllm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    root = tmp_path_factory.mktemp("stack")
    state_dir = root / "state"
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    port = free_port()
    spec["state_dir"] = str(state_dir)
    spec["router"]["port"] = port
    spec["auth"]["key_store_path"] = str(state_dir / "keys.json")
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
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
