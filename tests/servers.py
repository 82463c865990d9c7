"""Real servers on 127.0.0.1 for tests: Redis, a Redis Cluster, an S3/KMS-compatible server,
a JWKS issuer over TLS.

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
from serving.config import StoreSettings

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "ap-northeast-1",
}


@contextmanager
def paused(*pids: int):
    """Make servers unreachable without closing their sockets (like hung hosts)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
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

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.proc.pid,)

    def settings(self, namespace: str, **options) -> StoreSettings:
        """Store settings naming this server, for clients under test."""
        return StoreSettings(url=self.url, namespace=namespace, **options)

    def stop(self) -> None:
        embedded_store.stop(self.proc)


def start_store(kind: str, data_dir: Path) -> RedisServer | RedisClusterServer:
    """`kind` "redis" (one server) or "cluster" (three-node Redis Cluster): for parametrized tests."""
    return start_redis(data_dir) if kind == "redis" else start_redis_cluster(data_dir)


def start_redis(data_dir: Path) -> RedisServer:
    port = free_port()
    return RedisServer(embedded_store.start(data_dir, port), port, data_dir)


@dataclass
class RedisClusterServer:
    """Three Redis masters in cluster mode (no replicas), from the same binary as RedisServer.

    Each node keeps its slots in its own `nodes.conf`, so a restart brings back the same
    cluster; `url` names one node, from which clients discover the others.
    """

    procs: list[subprocess.Popen]
    ports: list[int]
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.procs)

    def settings(self, namespace: str, **options) -> StoreSettings:
        """Store settings naming this cluster (cluster-mode clients), for clients under test."""
        return StoreSettings(url=self.url, namespace=namespace, cluster=True, **options)

    def restart(self, *, kill: bool = False) -> None:
        for proc in self.procs:
            if kill:
                proc.kill()
                proc.wait()
            else:
                embedded_store.stop(proc)
        self.procs = [_start_cluster_node(self.data_dir, port) for port in self.ports]
        _wait_cluster_ok(self.ports)

    def stop(self) -> None:
        for proc in self.procs:
            embedded_store.stop(proc)


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster-bus ports (port + 10000, fixed in Redis 6.2) are free too."""
    import random
    import socket

    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 29999)
        if port in ports:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        ports.append(port)
    return ports


def _start_cluster_node(data_dir: Path, port: int) -> subprocess.Popen:
    node_dir = data_dir / str(port)
    node_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            str(embedded_store.redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(node_dir), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "5000", "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--logfile", str(node_dir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while _redis_cli(port, "PING") != "PONG":
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"cluster node on {port} did not start; see {node_dir / 'redis.log'}")
        time.sleep(0.1)
    return proc


def _redis_cli(port: int, *args: str) -> str:
    cli = embedded_store.redis_binary().with_name("redis-cli")
    out = subprocess.run([str(cli), "-h", "127.0.0.1", "-p", str(port), *args],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def _wait_cluster_ok(ports: list[int], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all("cluster_state:ok" in _redis_cli(p, "CLUSTER", "INFO") for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster on {ports} did not reach cluster_state:ok")
        time.sleep(0.2)


def start_redis_cluster(data_dir: Path, nodes: int = 3) -> RedisClusterServer:
    """A real Redis Cluster on 127.0.0.1: `nodes` masters sharing the 16384 slots."""
    ports = _cluster_ports(nodes)
    procs = [_start_cluster_node(data_dir, port) for port in ports]
    cli = embedded_store.redis_binary().with_name("redis-cli")
    created = subprocess.run(
        [str(cli), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
        capture_output=True, text=True, timeout=60,
    )
    server = RedisClusterServer(procs, ports, data_dir)
    try:
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]}")
        _wait_cluster_ok(ports)
    except BaseException:
        server.stop()
        raise
    return server


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


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it.

    Returns (CA bundle, server certificate, server key) as PEM files in `directory`.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "govllm test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


class Issuer:
    """An OIDC issuer: an RSA signing key and its JWKS document served over HTTPS.

    The certificate comes from a CA made for the test; `ca_bundle` is its PEM file, the
    `auth.oidc.ca_bundle` a deployment with a private PKI would set. `fetches` counts JWKS
    requests; `failing = True` makes the endpoint answer 503.
    """

    def __init__(self, *, issuer: str = "https://idp.example.go.jp", audience: str = "govllm"):
        import ssl
        import tempfile

        from cryptography.hazmat.primitives.asymmetric import rsa

        self.issuer, self.audience = issuer, audience
        self.kid = "key-1"
        self.jwk_alg: str | None = "RS256"  # the `alg` member published with the key, if any
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fetches = 0
        self.discoveries = 0  # GETs of /.well-known/openid-configuration
        self.discovery: dict | None = None  # served instead of the real discovery document
        self.failing = False
        self._jwks: dict = {}
        self._publish()
        self._tmp = tempfile.TemporaryDirectory(prefix="govllm-issuer-")
        self.ca_bundle, cert, key = (str(p) for p in _tls_files(Path(self._tmp.name)))
        issuer_ref = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/.well-known/openid-configuration":
                    issuer_ref.discoveries += 1
                    document = issuer_ref.discovery or {"issuer": issuer_ref.issuer,
                                                        "jwks_uri": issuer_ref.jwks_url}
                else:
                    issuer_ref.fetches += 1
                    document = issuer_ref._jwks
                if issuer_ref.failing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def jwks_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/.well-known/jwks.json"

    @property
    def url(self) -> str:
        """The server's own https URL: set `issuer = url` to test OIDC discovery against it."""
        return f"https://127.0.0.1:{self.port}"

    def _publish(self) -> None:
        from jwt.algorithms import RSAAlgorithm

        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update(kid=self.kid, use="sig")
        if self.jwk_alg:
            jwk["alg"] = self.jwk_alg
        self._jwks = {"keys": [jwk]}

    def rotate(self, kid: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.kid = kid
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._publish()

    def publish_without_alg(self) -> None:
        """Publish the key without an `alg` member, as some identity providers do."""
        self.jwk_alg = None
        self._publish()

    def token(self, *, tenant: str | None = "dev-local", user: str = "alice@example.go.jp",
              expires_in: int = 600, audience: str | None = None, issuer: str | None = None,
              key=None, kid: str | None = None, algorithm: str = "RS256", **claims) -> str:
        import jwt

        now = int(time.time())
        payload = {"iss": issuer or self.issuer, "aud": audience or self.audience, "sub": user,
                   "iat": now, "exp": now + expires_in, **claims}
        if tenant is not None:
            payload["tenant"] = tenant
        return jwt.encode(payload, key or self.private_key, algorithm=algorithm,
                          headers={"kid": kid or self.kid})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._tmp.cleanup()
