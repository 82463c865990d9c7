"""The router's real OTLP/HTTP exporter against the test receiver on 127.0.0.1.

What goes over the wire decodes (with opentelemetry-proto) to the spans the router made, and
a collector that hangs, fails or is down never holds a request up: requests keep completing
while an export is stuck, and spans flow again once the collector is back. (The same faults
against the running stack: tests/integration/test_tracing.py.)
"""

from __future__ import annotations

import asyncio

import pytest

from serving.config.tracing import TracingSettings
from serving.observability.tracing.spans import build_tracer
from serving.request import RequestContext
from tests.otlp_test_receiver import OTLPTestReceiver


@pytest.fixture
def receiver():
    r = OTLPTestReceiver().start()
    yield r
    r.stop()


def tracer_for(receiver: OTLPTestReceiver, **extra):
    settings = TracingSettings(enabled=True, endpoint=receiver.url, export_interval_s=0.1,
                               export_timeout_s=30, **extra)
    return build_tracer(settings, app="govllm-test", instance="replica-1")


def one_request(tracer) -> str:
    """A request's root span and one step span; returns its trace id."""
    ctx = RequestContext(request_id="b" * 32, operation="chat",
                         scope={"type": "http", "method": "POST", "path": "/v1/chat/completions",
                                "headers": []})

    class Authenticate:
        async def __call__(self, ctx):
            return None

    async def main():
        tracer.begin(ctx)
        (step,) = tracer.steps([Authenticate()])
        await step(ctx)
        ctx.status = 200
        tracer.end(ctx)

    asyncio.run(main())
    return ctx.trace.trace_id


def test_spans_arrive_decoded_with_their_resource(receiver):
    tracer = tracer_for(receiver)
    trace_id = one_request(tracer)
    spans = receiver.wait_for(lambda s: len([x for x in s if x.trace_id == trace_id]) == 2, 30)
    root = next(s for s in spans if s.name == "POST /v1/chat/completions")
    step = next(s for s in spans if s.name == "govllm.authenticate")
    assert root.kind == "SERVER" and root.parent_span_id == ""
    assert step.parent_span_id == root.span_id and step.trace_id == root.trace_id == trace_id
    assert root.resource["service.name"] == "govllm-router"
    assert root.resource["service.namespace"] == "govllm-test"
    assert root.attributes["govllm.request_id"] == "b" * 32
    tracer.shutdown()


def test_a_hung_failing_or_absent_collector_holds_no_request_up(receiver):
    tracer = tracer_for(receiver)
    with receiver.hold():
        one_request(tracer)
        receiver.wait_for(lambda _: receiver.held > 0, 30)  # an export is stuck in the receiver
        done = [one_request(tracer) for _ in range(50)]
        assert receiver.held > 0 and len(done) == 50  # they all finished while it was stuck
    with receiver.failing():
        done = [one_request(tracer) for _ in range(20)]
        assert len(done) == 20
    receiver.stop()  # down: connection refused
    done = [one_request(tracer) for _ in range(20)]
    assert len(done) == 20
    receiver.start()
    later = one_request(tracer)
    receiver.wait_for(lambda s: any(x.trace_id == later for x in s), 60)  # flowing again
    tracer.shutdown()
