"""The environment of one local run (`govllm serve`): Serve's flags plus private HAProxy files.

The flags themselves are serving/serve_env.py's; this module adds what differs per run on
one machine (HAProxy's file paths and side ports) and sets it in the driver, whose Ray
workers inherit it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from pathlib import Path

from serving.serve_env import SERVE_FLAGS


def free_port() -> int:
    """A port on 127.0.0.1 free right now (the OS picks it); the one helper for every caller."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_dir(run_dir: Path) -> Path:
    """Short per-run directory for HAProxy's files.

    HAProxy's admin socket path is limited to 97 bytes and Ray nests a 56-character
    directory under the base we give it, so the base must stay short: /tmp/gvh-<hash>.
    """
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"gvh-{digest}"


def serve_environment(run_dir: Path) -> dict[str, str]:
    """Variables for one local run; HAProxy files and side ports are private to the run.

    Several stacks can then run on one machine (a developer's `make serve` and the
    test suite's own stack) without fighting over /tmp/haproxy-serve, port 8404, or Serve's
    fallback proxy ports 8500/9500 (where a stack's HAProxy would reach another's router).
    """
    haproxy = haproxy_dir(run_dir)
    haproxy.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = dict(SERVE_FLAGS)
    env.update(
        {
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            # Serve's fallback proxy (HAProxy's backup server when no router replica passes
            # its health check) listens on 8500/9500 unless told otherwise. Two stacks on one
            # machine then share one fallback: a request to stack A whose router was briefly
            # marked down under load was answered by stack B's router (B's keys, B's tenants,
            # B's audit trail; seen as a 401 in the scheduling suite's spike).
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
            # A router replica that stops stays reachable this long so load balancers can
            # deregister it first (Ray's default: 30 s, sized for many HAProxy instances in
            # a cluster). A local run has one HAProxy on this machine, which drops a leaving
            # replica at its next config reload and health check (1 s, serve_env); 30 s only
            # made every Ctrl-C of `govllm serve` wait 30 s ("Shutdown tier 0 did not drain").
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        }
    )
    return env


def apply(env: dict[str, str]) -> None:
    """Set `env` in this process, keeping any value the operator already exported."""
    for key, value in env.items():
        os.environ.setdefault(key, value)
