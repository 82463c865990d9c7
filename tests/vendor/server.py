"""A vendor's OpenAI-compatible server, run as a vendor would: vLLM's own API server, started
directly (not through govllm), with an API key and TLS from a CA made for the test.

It serves a generated development model under the vendor's own model name. Its middleware
(tests/vendor/headers.py) records the headers of every request it receives.

A real vendor runs on its own machines; this one shares the test host's two cores with the
stack, so it runs at Ray's worker niceness (15, as the routers and engines do): at the default
niceness its engine, generating a long answer flat out, took the cores from the routers and the
store for seconds and timed out their store calls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cluster import devmodels
from govllm.runtime_env import free_port
from tests.servers import _tls_files

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240
NICENESS = 15  # Ray's default worker niceness (RAY_worker_niceness)


@dataclass
class VendorServer:
    root: Path
    model_dir: Path
    model_name: str
    api_key: str
    port: int
    ca_bundle: Path
    cert: Path
    key: Path
    headers_log: Path
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
               "GOVLLM_TEST_VENDOR_HEADERS": str(self.headers_log),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                 "--served-model-name", self.model_name, "--dtype", "float32", "--enforce-eager",
                 "--max-model-len", "2048", "--host", "127.0.0.1", "--port", str(self.port),
                 "--api-key", self.api_key, "--ssl-certfile", str(self.cert), "--ssl-keyfile", str(self.key),
                 "--middleware", "tests.vendor.headers.record"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True,
                preexec_fn=lambda: os.nice(NICENESS))

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"vendor server exited: {self.log_tail()}")
            try:
                resp = httpx.get(self.base_url + "/models", verify=str(self.ca_bundle), timeout=5,
                                 headers={"Authorization": f"Bearer {self.api_key}"})
                if resp.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vendor server not ready in {timeout_s} s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole server (API process and engine core), as a vendor outage."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def received(self) -> list[dict]:
        """Every request the vendor received so far: path and headers."""
        if not self.headers_log.exists():
            return []
        return [json.loads(line) for line in self.headers_log.read_text().splitlines() if line]

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def prepare(root: Path, *, model_name: str = "plamo-2-vendor", family: str = "qwen2") -> VendorServer:
    """Generate the vendor's model and TLS files; the server is not started yet."""
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "model"
    shape = devmodels.DevModelShape(family=family, seed=7, max_position_embeddings=2048)
    if not devmodels.is_current(model_dir, shape):
        devmodels.generate(model_dir, shape)
    ca, cert, key = _tls_files(root / "tls")
    return VendorServer(root=root, model_dir=model_dir, model_name=model_name,
                        api_key="vendor-" + os.urandom(12).hex(), port=free_port(), ca_bundle=ca,
                        cert=cert, key=key, headers_log=root / "headers.jsonl", log_path=root / "vendor.log")
