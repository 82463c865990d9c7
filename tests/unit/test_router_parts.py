"""Router building blocks that need no running server."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from serving.autoscaling import ONGOING_METRIC, data_plane_policy, desired_replicas
from serving.config import ModelRoute, RouterSettings, ServingConfig
from serving.request import APIError, RequestContext
from serving.router.admission import Admission
from serving.router.asgi import ClientTooSlow, read_body
from serving.router.dispatch import Dispatcher
from serving.router.endpoints import EndpointTable
from serving.router.pipeline import ParseRequest, ResolveModel
from serving.router.schema import ChatCompletionRequest, CompletionRequest, validate

CONFIG = ServingConfig(
    models=(ModelRoute(id="a", max_model_len=128), ModelRoute(id="b", max_model_len=128)),
    aliases={"default": ("a", "b"), "bee": ("b",)},
)


def ctx(operation="chat", body=b""):
    return RequestContext(request_id="r1", operation=operation, scope={"headers": []}, raw_body=body)


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"model": "a"}, "messages"),
        ({"model": "a", "messages": []}, "messages"),
        ({"model": "a", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "a", "messages": [{"content": "x"}]}, "messages.0.role"),
        ({"model": "a", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
        ({"model": "a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": "a", "messages": [{"role": "user", "content": "x"}], "temperature": 7}, "temperature"),
        ({"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_chat_schema_violations_are_400_naming_the_param(payload, param):
    with pytest.raises(APIError) as exc:
        validate(ChatCompletionRequest, payload)
    assert exc.value.status == 400 and exc.value.param == param
    assert param in exc.value.message


def test_schema_keeps_unknown_fields_for_vllm():
    req = validate(
        ChatCompletionRequest,
        {"model": "a", "messages": [{"role": "user", "content": "x"}], "min_tokens": 3, "ignore_eos": True},
    )
    assert req.model_extra == {"min_tokens": 3, "ignore_eos": True}
    assert validate(CompletionRequest, {"model": "a", "prompt": [1, 2, 3]}).prompt == [1, 2, 3]


@pytest.mark.parametrize("body, code", [(b"{", "invalid_json"), (b"[1]", "invalid_request_body"),
                                        (b"", "invalid_request_body"), (b"\xff\xfe", "invalid_json")])
def test_parse_rejects_non_objects(body, code):
    with pytest.raises(APIError) as exc:
        run(ParseRequest()(ctx(body=body)))
    assert exc.value.status == 400 and exc.value.code == code


def test_resolve_ids_aliases_and_unknown():
    resolve = ResolveModel(CONFIG)
    c = ctx()
    c.requested_model = "default"
    run(resolve(c))
    assert [m.id for m in c.candidates] == ["a", "b"]
    c.requested_model = "b"
    run(resolve(c))
    assert [m.id for m in c.candidates] == ["b"]
    c.requested_model = "zzz"
    with pytest.raises(APIError) as exc:
        run(resolve(c))
    assert exc.value.status == 404 and exc.value.code == "model_not_found" and "default" in exc.value.message


def test_read_body_limits():
    async def receiver(chunks):
        it = iter(chunks)

        async def receive():
            return {"type": "http.request", **next(it)}

        return receive

    async def go(headers, chunks, limit):
        return await read_body({"headers": headers}, await receiver(chunks), limit)

    body = run(go([], [{"body": b"ab", "more_body": True}, {"body": b"cd"}], 10))
    assert body == b"abcd"
    with pytest.raises(APIError) as exc:
        run(go([(b"content-length", b"11")], [{"body": b"x" * 11}], 10))
    assert exc.value.status == 413 and "11 bytes" in exc.value.message
    with pytest.raises(APIError) as exc:  # chunked upload cut off as it crosses the limit
        run(go([], [{"body": b"x" * 6, "more_body": True}, {"body": b"x" * 6, "more_body": True}], 10))
    assert exc.value.status == 413 and "at least 12" in exc.value.message


def _events(*payloads):
    return b"".join(b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n" for p in payloads)


def dispatcher() -> Dispatcher:
    table = EndpointTable()
    return Dispatcher(table, RouterSettings(), Admission(CONFIG.models, RouterSettings(), table),
                      data_plane_token="t")


def test_body_rewritten_only_when_needed():
    d = dispatcher()
    c = ctx(body=b'{"model":"a","messages":[]}')
    c.payload, c.requested_model = {"model": "a", "messages": []}, "a"
    assert d._body_for(c, CONFIG.models[0]) is c.raw_body
    c.requested_model = "default"
    assert json.loads(d._body_for(c, CONFIG.models[0]))["model"] == "a"
    # streams always ask for per-chunk usage; without client options the bytes are extended
    c.requested_model, c.stream = "a", True
    extended = d._body_for(c, CONFIG.models[0])
    assert extended.startswith(c.raw_body[:-1])
    assert json.loads(extended)["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    c.payload = {"model": "a", "messages": [], "stream_options": {"include_usage": False}}
    assert json.loads(d._body_for(c, CONFIG.models[0]))["stream_options"] == {
        "include_usage": True, "continuous_usage_stats": True}


def test_power_of_two_choices_prefers_less_loaded():
    table = EndpointTable()
    table.update({"a": [{"replica_id": f"r{i}", "url": f"http://h:{i}", "ongoing": 0} for i in range(4)]})
    busy = table.by_model["a"][0]
    busy.inflight = 100
    picks = Counter(table.pick("a").replica_id for _ in range(2000))
    assert picks["r0"] == 0 and all(picks[f"r{i}"] > 400 for i in (1, 2, 3))
    table.eject(table.by_model["a"][1], "test")
    assert all(table.pick("a").replica_id != "r1" for _ in range(200))
    assert table.replica_count("a") == 3 and table.pick("zzz") is None
    # an ejected replica stays out across registry updates until readmitted
    table.update({"a": [{"replica_id": f"r{i}", "url": f"http://h:{i}", "ongoing": 0} for i in range(4)]})
    assert table.replica_count("a") == 3
    ejected = table.by_model["a"][1]
    assert not table.may_readmit(ejected)  # not before its ejection time
    assert table.may_readmit(ejected, now=ejected.ejected_until)
    table.readmit(ejected)
    assert table.replica_count("a") == 4
    # ejection time doubles while a replica keeps failing, and starts over after a success
    before = time.monotonic()
    table.eject(ejected, "again")
    hold = ejected.ejected_until - before
    assert ejected.ejections == 2 and 2 * table.eject_s <= hold < 2 * table.eject_s + 1
    table.readmit(ejected)
    table.succeeded(ejected)
    assert ejected.ejections == 0
    # an update keeps in-flight counts of replicas that are still there
    table.update({"a": [{"replica_id": "r0", "url": "http://h:0", "ongoing": 5}]})
    assert table.by_model["a"][0].inflight == 100 and table.by_model["a"][0].load == 105


def test_autoscaling_policy():
    assert desired_replicas(0, 16) == 0
    assert desired_replicas(16, 16) == 1
    assert desired_replicas(17, 16) == 2
    with pytest.raises(ValueError):
        desired_replicas(1, 0)

    class Cfg:
        target_ongoing_requests = 8

    class Ctx:
        config = Cfg()
        target_num_replicas = 3
        current_num_replicas = 3
        aggregated_metrics = {ONGOING_METRIC: {"r1": 10.0, "r2": 15.0}}
        total_queued_requests = 0.0

    assert data_plane_policy(Ctx())[0] == 4
    Ctx.aggregated_metrics = {}
    assert data_plane_policy(Ctx())[0] == 3  # no signal: hold


def test_ejection_cuts_short_what_waits_on_the_replica_and_is_shared():
    async def go():
        table = EndpointTable()
        table.update({"a": [{"replica_id": "r0", "url": "http://h:0"}]})
        ep = table.by_model["a"][0]

        async def waiting():
            async with asyncio.timeout(None) as deadline:
                ep.waiting.add(deadline)
                await asyncio.sleep(30)

        task = asyncio.create_task(waiting())
        await asyncio.sleep(0)
        table.eject(ep, "hung")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, 1)
        assert table.take_reports() == [("r0", table.eject_s)] and table.take_reports() == []
        # another router's ejection arrives through the registry: ejected here, not reported back
        other = EndpointTable()
        other.update({"a": [{"replica_id": "r0", "url": "http://h:0", "ejected_s": 3.0}]})
        assert other.replica_count("a") == 0 and other.take_reports() == []
    run(go())


def test_an_ejection_and_a_readmission_are_logged_for_the_operator(caplog):
    table = EndpointTable()
    table.update({"a": [{"replica_id": "r0", "url": "http://h:0"}]})
    ep = table.by_model["a"][0]
    with caplog.at_level("INFO", logger="govllm.router"):
        table.eject(ep, "engine failed (HTTP 500)", failed=True)
        table.eject(ep, "engine failed (HTTP 500)", failed=True)  # already out: said once
        table.readmit(ep)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", f"model a replica r0 out of rotation for {table.eject_s:.1f} s: engine failed (HTTP 500)"),
        ("INFO", "model a replica r0 back in rotation"),
    ]


def test_ejecting_from_the_handler_of_an_expired_deadline_is_safe():
    """The relay ejects a replica after its own idle deadline fired (still registered)."""
    async def go():
        table = EndpointTable()
        table.update({"a": [{"replica_id": "r0", "url": "http://h:0"}]})
        ep = table.by_model["a"][0]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01) as deadline:
                ep.waiting.add(deadline)
                await asyncio.sleep(1)
        table.eject(ep, "stream went silent")  # must not raise on the expired deadline
        assert ep.ejected
    run(go())


def test_a_probe_timeout_does_not_eject_a_replica_whose_streams_are_flowing():
    """A slow /health beside live streams is CPU starvation, not a hang: ejecting would cut the
    streams. Silence, or an engine that says it is dead, still ejects."""
    async def go(last_probe: str, data_age_s: float) -> bool:
        table = EndpointTable()
        d = Dispatcher(table, RouterSettings(), Admission(CONFIG.models, RouterSettings(), table),
                       data_plane_token="t")
        table.update({"a": [{"replica_id": "r0", "url": "http://h:0"}]})
        ep = table.by_model["a"][0]
        ep.last_data_at = time.monotonic() - data_age_s

        async def unhealthy(e):
            e.last_probe = last_probe
            return False

        d.healthy = unhealthy
        await d.probe_once()
        return ep.ejected

    assert run(go("TimeoutError", 0.1)) is False
    assert run(go("TimeoutError", 30.0)) is True
    assert run(go("HTTP 503", 0.1)) is True
    assert run(go("ClientConnectorError", 0.1)) is True


def _event(i: int) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "a",
             "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}],
             "usage": {"prompt_tokens": 3, "completion_tokens": i + 1, "total_tokens": i + 4}}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


class _Upstream:
    """An engine's stream: `events` then the end, or silence where `events` runs out early."""

    def __init__(self, events: list[bytes], end: bool = True):
        self._events, self._end = list(events), end
        self.content = self

    async def readany(self) -> bytes:
        if self._events:
            return self._events.pop(0)
        if self._end:
            return b"data: [DONE]\n\n"
        await asyncio.sleep(3600)


def _relay(upstream: _Upstream, takes: int, send_s: float = 0.2, idle_s: float = 5.0):
    """Relay `upstream` to a client that takes `takes` body messages and then no more."""
    async def go():
        table = EndpointTable()
        settings = RouterSettings(client_send_timeout_s=send_s, stream_idle_timeout_s=idle_s)
        d = Dispatcher(table, settings, Admission(CONFIG.models, settings, table), data_plane_token="t")
        table.update({"a": [{"replica_id": "r0", "url": "http://h:0"}]})
        ep = table.by_model["a"][0]
        c = ctx()
        c.payload, c.stream, c.model = {"model": "a", "stream": True}, True, CONFIG.models[0]
        bodies = []

        async def send(message):
            if message["type"] == "http.response.body":
                if len(bodies) == takes:
                    await asyncio.sleep(3600)  # the client's window is full: it stopped reading
                bodies.append(message["body"])

        async def watchdog():  # as the router deployment runs it, faster
            while True:
                await asyncio.sleep(0.05)
                await d.cut_stalled_clients()

        watching = asyncio.create_task(watchdog())
        started = time.monotonic()
        try:
            await d._relay_stream(c, ep, upstream, _event(0), send)
            outcome = None
        except ClientTooSlow as exc:
            outcome = exc
        finally:
            watching.cancel()
        return outcome, time.monotonic() - started, ep.ejected, c.usage, bodies, d._relays
    return run(go())


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout_and_billed_what_it_was_sent():
    outcome, waited, ejected, usage, bodies, relays = _relay(_Upstream([_event(1), _event(2), _event(3)]),
                                                             takes=2)
    assert isinstance(outcome, ClientTooSlow) and 0.2 <= waited < 3
    assert not ejected  # the client's fault, not the replica's
    assert usage["completion_tokens"] == 2 and len(bodies) == 2  # what reached the client's socket
    assert relays == set()


def test_a_client_that_reads_gets_the_whole_stream_and_a_silent_engine_is_still_the_engines_fault():
    outcome, _, ejected, usage, bodies, _ = _relay(_Upstream([_event(1), _event(2)]), takes=100)
    assert outcome is None and not ejected and usage["completion_tokens"] == 3
    assert bodies[-1] == b"data: [DONE]\n\n"
    # the engine goes silent longer than the client timeout: the idle deadline (the engine's,
    # not the client's) ends it, and ejects the replica
    outcome, waited, ejected, _, bodies, _ = _relay(_Upstream([_event(1)], end=False), takes=100,
                                                    send_s=0.1, idle_s=0.5)
    assert outcome is None and ejected and 0.5 <= waited < 3
    assert b"upstream_timeout" in bodies[-2]
