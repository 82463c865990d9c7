"""The process environment Ray Serve's data path needs, wherever the application runs.

Ray Serve reads these flags when `ray.serve` is first imported, in the driver and in
every worker, so they must be set before anything imports `ray.serve`: `govllm serve`
sets them in its own process (govllm/runtime_env.py), the Helm chart on every Ray
container (cluster/render/helm_values.py). One owner, so both run the same data path.

Why each one is set: docs/architecture.md, "Data path".
"""

from __future__ import annotations

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
