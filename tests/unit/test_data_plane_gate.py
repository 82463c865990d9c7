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
    assert not watch.stalled(waiting_since=0.0, now=0.0)
    assert not watch.stalled(waiting_since=0.0, now=9.0)
    assert watch.stalled(waiting_since=0.0, now=10.5)    # in flight, nothing produced for 10 s
    counter["v"] = 5.0
    assert not watch.stalled(waiting_since=0.0, now=11.0)   # progress: healthy again
    assert not watch.stalled(waiting_since=None, now=30.0)  # idle is not stalled


def test_idle_time_before_a_request_is_not_counted_as_its_wait():
    """The engine was idle (counters still) for 20 s; a request that has waited 2 s is not a
    stall, one that has waited the whole stall time is."""
    watch = StallWatch(3.0, progress=lambda: 7.0)
    assert not watch.stalled(waiting_since=None, now=0.0)
    assert not watch.stalled(waiting_since=18.0, now=20.0)
    assert not watch.stalled(waiting_since=18.0, now=20.9)
    assert watch.stalled(waiting_since=18.0, now=21.0)


def test_the_gate_reports_its_oldest_request_in_flight():
    """Overlapping short requests never make an old one: the oldest still in flight is what counts."""
    release = {name: asyncio.Event() for name in ("a", "b")}

    async def app(scope, receive, send):
        await release[scope["name"]].wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run():
        gate = DataPlaneGate(app, "t")
        scope = {"type": "http", "path": "/v1/chat/completions", "headers": [(b"authorization", b"Bearer t")]}

        async def send(message):
            pass

        assert gate.waiting_since is None and gate.ongoing == 0
        a = asyncio.create_task(gate({**scope, "name": "a"}, None, send))
        await asyncio.sleep(0.01)
        first = gate.waiting_since
        b = asyncio.create_task(gate({**scope, "name": "b"}, None, send))
        await asyncio.sleep(0.01)
        assert gate.ongoing == 2 and gate.waiting_since == first
        release["a"].set()
        await a
        assert gate.ongoing == 1 and gate.waiting_since > first
        release["b"].set()
        await b
        assert gate.ongoing == 0 and gate.waiting_since is None

    asyncio.run(run())
