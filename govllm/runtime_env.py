"""Process environment for Ray Serve's data path.

Ray Serve reads these flags when `ray.serve` is first imported, in the driver
and in every worker (workers inherit the environment of the Ray cluster that
the driver starts). They must therefore be set before anything imports
`ray.serve`; the Helm chart sets the same variables on the Ray pods.

Why each one is set: docs/architecture.md, "Data path".
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from pathlib import Path

#: Flags that select Ray Serve's HAProxy + direct-ingress data path, and quiet telemetry.
SERVE_FLAGS: dict[str, str] = {
    # HAProxy in front of router replicas that serve HTTP themselves (direct ingress):
    # no Ray actor call between a client and the router.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Run deployment code on the replica's own event loop instead of a second thread:
    # otherwise every streamed chunk crosses threads twice in the router replica.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # The machines have no internet; do not try to report usage.
    "RAY_USAGE_STATS_ENABLED": "0",
}


#: Read by govllm-haproxy (govllm/haproxy_wrapper.py), which Ray runs instead of HAProxy.
HAPROXY_HEADER_TIMEOUT_ENV = "GOVLLM_HAPROXY_HTTP_REQUEST_TIMEOUT_S"
HAPROXY_WRAPPER = "govllm-haproxy"


def haproxy_environment(header_timeout_s: int, wrapper_path: str) -> dict[str, str]:
    """Variables that make Ray Serve run HAProxy through govllm's config adjustments.

    Ray 2.60 renders HAProxy's configuration itself and offers no setting for the
    header-read timeout or the stats listener's address; `govllm-haproxy` amends the
    rendered file (see govllm/haproxy_wrapper.py) before it starts the real binary.
    The chart sets the same variables on every Ray pod.
    """
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": wrapper_path,
        HAPROXY_HEADER_TIMEOUT_ENV: str(int(header_timeout_s)),
        # Health-check router replicas every second (Ray's default: 5 s), so a router that
        # hangs (SIGSTOP, a wedged event loop) leaves HAProxy's rotation within ~1.5 s.
        "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER": "1s",
    }


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
    test suite's own stack) without fighting over /tmp/haproxy-serve or port 8404.
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
        }
    )
    return env


def apply(env: dict[str, str]) -> None:
    """Set `env` in this process, keeping any value the operator already exported."""
    for key, value in env.items():
        os.environ.setdefault(key, value)
