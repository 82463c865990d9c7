"""Real servers on 127.0.0.1 for tests: Redis, an S3/KMS-compatible server, a JWKS issuer.

Each is a separate process (or HTTP thread) on a free port, so tests can also
make it unreachable (SIGSTOP) and bring it back (SIGCONT).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from govllm import embedded_store
from govllm.runtime_env import free_port

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "ap-northeast-1",
}


@contextmanager
def paused(pid: int):
    """Make a server unreachable without closing its sockets (like a hung host)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@dataclass
class RedisServer:
    proc: subprocess.Popen
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restart(self, *, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
            self.proc.wait()
        else:
            embedded_store.stop(self.proc)
        self.proc = embedded_store.start(self.data_dir, self.port)

    def stop(self) -> None:
        embedded_store.stop(self.proc)


def start_redis(data_dir: Path) -> RedisServer:
    port = free_port()
    return RedisServer(embedded_store.start(data_dir, port), port, data_dir)


@dataclass
class MotoServer:
    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name="ap-northeast-1")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_moto() -> MotoServer:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **AWS_ENV},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return MotoServer(proc, port)
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


class Issuer:
    """An OIDC issuer: an RSA signing key and its JWKS document served over HTTP."""

    def __init__(self, *, issuer: str = "https://idp.example.go.jp", audience: str = "govllm"):
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.issuer, self.audience = issuer, audience
        self.kid = "key-1"
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._jwks: dict = {}
        self._publish()
        issuer_ref = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = json.dumps(issuer_ref._jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    def _publish(self) -> None:
        from jwt.algorithms import RSAAlgorithm

        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        self._jwks = {"keys": [jwk]}

    def rotate(self, kid: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.kid = kid
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._publish()

    def token(self, *, tenant: str | None = "dev-local", user: str = "alice@example.go.jp",
              expires_in: int = 600, audience: str | None = None, issuer: str | None = None,
              key=None, kid: str | None = None, **claims) -> str:
        import jwt

        now = int(time.time())
        payload = {"iss": issuer or self.issuer, "aud": audience or self.audience, "sub": user,
                   "iat": now, "exp": now + expires_in, **claims}
        if tenant is not None:
            payload["tenant"] = tenant
        return jwt.encode(payload, key or self.private_key, algorithm="RS256",
                          headers={"kid": kid or self.kid})

    def close(self) -> None:
        self._server.shutdown()
