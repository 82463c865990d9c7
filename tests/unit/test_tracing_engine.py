"""Tracing settings from the spec to every process that exports: the router's ServingConfig,
each engine's vLLM arguments and environment, and the data plane between them.

vLLM itself is asked what it makes of the rendered settings (its config validation, the span
exporter it builds from the environment, the trace headers its OpenAI server passes on), so a
vLLM upgrade that changes how it reads them fails here, not silently in production.
"""

from __future__ import annotations

import asyncio

import pytest
import yaml

from cluster.render.serve_config import app_args
from cluster.spec.schema import DEFAULT_SPEC_PATH, ClusterSpec
from serving.config import ServingConfig
from serving.config.tracing import TracingSettings
from serving.llm_server import DataPlaneGate
from serving.observability.tracing.engine import ENGINE_SERVICE, engine_tracing
from serving.observability.tracing.names import TRACE_ID_HEADER
from serving.router.openapi import document

ENDPOINT = "http://otel-collector.monitoring:4318/v1/traces"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def spec(tracing: dict | None = None, **engine_kwargs) -> ClusterSpec:
    data = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    if tracing is not None:
        data["tracing"] = tracing
    if engine_kwargs:
        data["engine"]["engine_kwargs"] = engine_kwargs
    return ClusterSpec.model_validate(data)


def rendered(tracing: dict | None) -> dict:
    """The application's arguments in the form a Serve config file carries them."""
    args = app_args(spec(tracing), DEFAULT_SPEC_PATH.parent)
    return args.to_config() if hasattr(args, "to_config") else args


def test_off_renders_nothing_for_the_engines():
    args = rendered(None)
    assert ServingConfig.model_validate(args["serving"]).tracing.enabled is False
    for llm in args["llm_configs"]:
        assert not any(k.startswith(("otlp", "collect_detailed")) for k in llm["engine_kwargs"])
        env = (llm["runtime_env"] or {}).get("env_vars", {})
        assert not any(k.startswith("OTEL_") for k in env)
    assert engine_tracing(TracingSettings(), app="a", model_id="m") == ({}, {})


def test_on_reaches_the_router_and_every_engine_from_one_section():
    from ray.serve.llm import LLMConfig

    args = rendered({"enabled": True, "endpoint": ENDPOINT, "sample_ratio": 0.25,
                     "engine_detail": "model"})
    serving = ServingConfig.model_validate(args["serving"])
    assert serving.tracing.endpoint == ENDPOINT and serving.tracing.sample_ratio == 0.25
    assert args["llm_configs"]
    for llm in args["llm_configs"]:
        config = LLMConfig.model_validate(llm)  # Ray Serve LLM accepts it as written
        assert config.engine_kwargs["otlp_traces_endpoint"] == ENDPOINT
        assert config.engine_kwargs["collect_detailed_traces"] == ["model"]
        env = llm["runtime_env"]["env_vars"]
        assert env["OTEL_SERVICE_NAME"] == ENGINE_SERVICE
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
            f"service.namespace=govllm-local,govllm.model={config.model_id}")
        assert env["VLLM_CPU_KVCACHE_SPACE"]  # the model's own variables are kept


def test_vllm_reads_the_rendered_settings_as_meant(monkeypatch):
    """vLLM's own config accepts the arguments; its exporter and sampler follow the variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, _get_from_env_or_default
    from vllm.config import ObservabilityConfig
    from vllm.tracing.otel import get_span_exporter

    settings = TracingSettings(enabled=True, endpoint=ENDPOINT, sample_ratio=0.25,
                               engine_detail="all")
    kwargs, env = engine_tracing(settings, app="govllm-local", model_id="tiny-llama-ja")
    config = ObservabilityConfig(**kwargs)
    assert config.otlp_traces_endpoint == ENDPOINT and config.collect_detailed_traces == ["all"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exporter = get_span_exporter(ENDPOINT)  # vLLM's default would be gRPC
    assert isinstance(exporter, OTLPSpanExporter)
    sampler = _get_from_env_or_default()
    assert isinstance(sampler, ParentBased) and "0.25" in sampler.get_description()


def test_the_spec_owns_the_engines_tracing_arguments():
    with pytest.raises(ValueError, match="otlp_traces_endpoint is not allowed here: it is set from "
                       "tracing.endpoint"):
        spec(None, otlp_traces_endpoint=ENDPOINT)
    with pytest.raises(ValueError, match="tracing.engine_detail"):
        spec(None, collect_detailed_traces=["all"])
    with pytest.raises(ValueError, match="tracing.endpoint is required"):
        spec({"enabled": True})


def test_the_data_plane_passes_the_traceparent_to_vllm():
    """The replica's gate hands the router's headers to vLLM's app unchanged, and vLLM's
    OpenAI serving takes the trace context from them (its `_get_trace_headers`)."""
    from starlette.datastructures import Headers
    from vllm.entrypoints.serve.engine.serving import BaseServing

    seen = {}

    async def vllm_app(scope, receive, send):
        seen["headers"] = scope["headers"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message):
        return None

    async def receive():
        return {"type": "http.request", "body": b""}

    headers = [(b"authorization", b"Bearer t"), (b"traceparent", TRACEPARENT.encode()),
               (b"tracestate", b"govllm=1")]
    gate = DataPlaneGate(vllm_app, "t")
    asyncio.run(gate({"type": "http", "path": "/v1/chat/completions", "headers": headers},
                     receive, send))
    assert seen["headers"] == headers
    extracted = asyncio.run(BaseServing._get_trace_headers(None, Headers(raw=seen["headers"])))
    assert extracted == {"traceparent": TRACEPARENT, "tracestate": "govllm=1"}


def test_the_openapi_document_names_the_trace_headers_the_code_uses():
    doc = document()
    components = doc["components"]
    for response in ("Answer", "Error"):
        assert components["responses"][response]["headers"][TRACE_ID_HEADER]["$ref"] == (
            "#/components/headers/TraceId")
    assert components["parameters"]["TraceParent"]["name"] == "traceparent"
    for path in ("/v1/chat/completions", "/v1/completions"):
        refs = [p["$ref"] for p in doc["paths"][path]["post"]["parameters"]]
        assert "#/components/parameters/TraceParent" in refs
