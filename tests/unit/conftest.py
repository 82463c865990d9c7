"""Fixtures shared by the unit tests that need a real shared store."""

from __future__ import annotations

import pytest

from tests.servers import start_store


@pytest.fixture(scope="module", params=["redis", "cluster"])
def store_server(request, tmp_path_factory):
    """A real Redis and a real 3-node Redis Cluster on 127.0.0.1: every store test runs on both."""
    server = start_store(request.param, tmp_path_factory.mktemp(request.param))
    yield server
    server.stop()
