"""The model replica's gate: only the routers' credential passes, probes stay open, a stalled
engine makes /health fail. (The gate on a real replica is exercised by tests/faults.)"""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.llm_server import DataPlaneGate, StallWatch


async def _engine_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"engine"})


def call(gate: DataPlaneGate, path: str, auth: bytes | None = None) -> tuple[int, bytes]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    headers = [(b"authorization", auth)] if auth is not None else []
    asyncio.run(gate({"type": "http", "path": path, "headers": headers}, receive, send))
    return sent[0]["status"], sent[-1]["body"]


def test_only_the_router_credential_reaches_the_engine():
    gate = DataPlaneGate(_engine_app, "s3cret")
    assert call(gate, "/v1/chat/completions", b"Bearer s3cret") == (200, b"engine")
    for auth in (None, b"Bearer wrong", b"s3cret", b"Bearer s3cret2", b"bearer s3cret"):
        status, body = call(gate, "/v1/chat/completions", auth)
        assert status == 401 and json.loads(body)["error"]["code"] == "data_plane_credential_required"
    assert call(gate, "/tokenize")[0] == 401
    assert call(gate, "/health") == (200, b"engine") and call(gate, "/metrics") == (200, b"engine")
    with pytest.raises(ValueError):
        DataPlaneGate(_engine_app, "")


def test_stalled_engine_fails_its_health_check():
    gate = DataPlaneGate(_engine_app, "t")
    gate.stalled = True
    status, body = call(gate, "/health")
    assert status == 503 and json.loads(body)["error"]["code"] == "engine_stalled"


def test_stall_needs_requests_in_flight_and_frozen_counters():
    counter = {"v": 0.0}
    watch = StallWatch(10.0, progress=lambda: counter["v"])
    assert not watch.stalled(ongoing=2, now=0.0)
    assert not watch.stalled(ongoing=2, now=9.0)
    assert watch.stalled(ongoing=2, now=10.5)           # in flight, nothing produced for 10 s
    counter["v"] = 5.0
    assert not watch.stalled(ongoing=2, now=11.0)       # progress: healthy again
    assert not watch.stalled(ongoing=0, now=30.0)       # idle is not stalled
    assert not watch.stalled(ongoing=1, now=35.0)       # the clock restarts when work arrives
    assert StallWatch(1.0, progress=lambda: None).stalled(ongoing=5, now=100.0) is False
