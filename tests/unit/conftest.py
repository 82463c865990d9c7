"""tests/unit holds tests that need no server and start no program: they run in seconds.

Anything that starts Redis, an S3 server, helm, HAProxy, promtool, an engine or an HTTP server
of its own lives in tests/component/ (`make test-component`). This fixture keeps it that way:
a unit test that spawns a process or listens on a socket fails and says where it belongs.
"""

from __future__ import annotations

import socket
import subprocess

import pytest


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(what: str):
        def refused(*args, **kwargs):
            raise AssertionError(f"a unit test may not {what}: move it to tests/component/")
        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a process"))
    monkeypatch.setattr(socket.socket, "listen", refuse("listen on a socket"))
