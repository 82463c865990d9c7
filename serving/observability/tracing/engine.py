"""vLLM's own request span, joined to the router's trace (rendered into each model's LLMConfig).

vLLM exports one `llm_request` span per request when its engine argument
`otlp_traces_endpoint` is set, with the parent taken from the request's W3C
`traceparent` header, which the router sends on every upstream request. So the
engine's timings (queue, prefill, decode, its own TTFT) are vLLM's, not re-derived.
What vLLM does not take as arguments it reads from the standard OpenTelemetry
environment variables, set here on the model deployment's runtime environment:
it defaults to gRPC, govllm speaks OTLP/HTTP (protobuf) everywhere.
"""

from __future__ import annotations

from typing import Any

from serving.config.tracing import TracingSettings

#: `service.name` of each side of a trace (OpenTelemetry resource attribute).
ROUTER_SERVICE = "govllm-router"
ENGINE_SERVICE = "govllm-engine"


def engine_tracing(settings: TracingSettings, *, app: str, model_id: str
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    """(vLLM engine arguments, environment variables) for one model; both empty when off.

    The sampler is parent-based with the spec's ratio: the router's traceparent carries its
    decision, so the engine records exactly the requests whose router spans are recorded.
    """
    if not settings.enabled:
        return {}, {}
    kwargs: dict[str, Any] = {"otlp_traces_endpoint": settings.endpoint}
    if settings.engine_detail != "none":
        kwargs["collect_detailed_traces"] = [settings.engine_detail]
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": f"{settings.export_timeout_s:g}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{settings.sample_ratio:g}",
        "OTEL_BSP_SCHEDULE_DELAY": str(round(settings.export_interval_s * 1000)),
        "OTEL_BSP_MAX_QUEUE_SIZE": str(settings.max_queue_spans),
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(settings.max_batch_spans),
        "OTEL_SERVICE_NAME": ENGINE_SERVICE,
        "OTEL_RESOURCE_ATTRIBUTES": f"service.namespace={app},govllm.model={model_id}",
    }
    return kwargs, env
