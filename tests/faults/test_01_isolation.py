"""Only the router reaches an engine: a replica's data-plane port refuses everyone else."""

from __future__ import annotations

import httpx
import pytest

from tests.faults.conftest import WORKHORSE

pytestmark = pytest.mark.faults

GENERATED = "vllm:generation_tokens_total"
PROMPTS = "vllm:prompt_tokens_total"

CALLS = [
    ("POST", "/v1/chat/completions", {"model": WORKHORSE, "max_tokens": 5,
                                      "messages": [{"role": "user", "content": "直接"}]}),
    ("POST", "/v1/completions", {"model": WORKHORSE, "prompt": "直接", "max_tokens": 5}),
    ("POST", "/tokenize", {"model": WORKHORSE, "prompt": "直接"}),
    ("POST", "/detokenize", {"model": WORKHORSE, "tokens": [1, 2]}),
    ("GET", "/v1/models", None),
    ("GET", "/version", None),
    ("GET", "/docs", None),
]


def test_replica_ports_refuse_every_request_without_the_router_credential(fault_stack):
    before = {m: (fault_stack.engine_metric(m, GENERATED), fault_stack.engine_metric(m, PROMPTS))
              for m in ("tiny-llama-ja", "tiny-qwen2-ja")}
    urls = [e["url"] for m in before for e in fault_stack.endpoints(m, fresh=True)]
    assert urls
    for url in urls:
        for method, path, body in CALLS:
            # nothing, a govllm API key (valid at the router, worthless here), a made-up token
            for auth in (None, f"Bearer {fault_stack.api_key}", "Bearer guess"):
                headers = {"Authorization": auth} if auth else {}
                resp = httpx.request(method, url + path, json=body, headers=headers, timeout=10)
                assert resp.status_code == 401, (url, path, auth is not None, resp.text)
                assert resp.json()["error"]["code"] == "data_plane_credential_required"
        # probes stay open: Prometheus and Kubernetes read them without a credential
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert httpx.get(url + "/metrics", timeout=10).status_code == 200
    after = {m: (fault_stack.engine_metric(m, GENERATED), fault_stack.engine_metric(m, PROMPTS))
             for m in before}
    assert after == before, "a refused request reached an engine"


def test_the_same_request_through_the_router_does_reach_the_engine(fault_stack, openai_client):
    """Control: the counters above do move when a request is allowed, so the test can fail."""
    before = fault_stack.engine_metric(WORKHORSE, GENERATED)
    openai_client.chat.completions.create(model=WORKHORSE, max_tokens=5,
                                          messages=[{"role": "user", "content": "経由"}])
    assert fault_stack.engine_metric(WORKHORSE, GENERATED) > before


def test_haproxy_stats_page_listens_on_localhost_only(fault_stack):
    """Ray binds HAProxy's stats page to every interface; govllm-haproxy moves it to 127.0.0.1."""
    import re
    import socket

    from govllm.runtime_env import haproxy_dir

    configs = list(haproxy_dir(fault_stack.state_dir / "run").glob("*/haproxy.cfg"))
    assert configs, "no HAProxy configuration found for this stack"
    stats = configs[0].read_text().split("listen stats", 1)[1]
    port = int(re.search(r"bind 127\.0\.0\.1:(\d+)", stats).group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # reachable locally
    node_ip = socket.gethostbyname(socket.gethostname())
    if node_ip.startswith("127."):
        node_ip = _non_loopback_ip()
    if node_ip is None:
        pytest.skip("this host has no address besides loopback to try the stats port on")
    with pytest.raises(OSError):
        socket.create_connection((node_ip, port), timeout=5).close()


def test_haproxy_falls_back_only_to_this_stacks_own_serve_proxy(fault_stack):
    """HAProxy's backup server (used while no router replica passes its health check) is this
    stack's own Serve proxy: with Serve's default port (8500) two stacks on one machine shared
    it, and a request to one stack was answered by the other's router."""
    import re

    import psutil

    from govllm.runtime_env import haproxy_dir

    configs = list(haproxy_dir(fault_stack.state_dir / "run").glob("*/haproxy.cfg"))
    assert configs, "no HAProxy configuration found for this stack"
    backups = re.findall(r"server \S+ 127\.0\.0\.1:(\d+) check backup", configs[0].read_text())
    assert backups, "no fallback server in HAProxy's configuration"
    ours = {p.pid for p in fault_stack.descendants()}
    for port in map(int, backups):
        assert port != 8500, "the fallback proxy is on Serve's shared default port"
        owners = {c.pid for c in psutil.net_connections("tcp")
                  if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert owners and owners <= ours, (port, owners)


def _non_loopback_ip() -> str | None:
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing interface
        ip = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if ip.startswith("127.") else ip
