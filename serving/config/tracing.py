"""What an operator declares about tracing (spec `tracing:`), shared by the spec and the router.

The same model validates the cluster spec and travels to the router inside its
ServingConfig, and `cluster/` renders the engines' vLLM arguments from it, so one
section decides where every span of a request goes. Plain pydantic: importing it
imports no OpenTelemetry.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from serving.strict import StrictModel

#: The OTLP/HTTP path of the traces signal (what a collector's otlp receiver serves on 4318).
TRACES_PATH = "/v1/traces"


class TracingSettings(StrictModel):
    """OpenTelemetry traces: where they go, how many requests are sampled, batching.

    Off by default; off costs one attribute test per request (docs/benchmarks.md).
    """

    enabled: bool = Field(
        default=False,
        description="Export one trace per API request: the router's steps, the engine's own span.",
    )
    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP (protobuf) traces URL of the collector, e.g. "
        "http://otel-collector.monitoring:4318/v1/traces. Routers and engines both send here. "
        "Collector headers and CA: the standard OTEL_EXPORTER_OTLP_TRACES_HEADERS / "
        "_CERTIFICATE variables on the Ray nodes.",
    )
    sample_ratio: float = Field(
        default=1.0, ge=0, le=1,
        description="Share of new traces recorded (parent-based: a caller's traceparent decides "
        "for its own requests; the engine follows the router's decision).",
    )
    export_timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="Longest one export (retries included) may take; it runs on the exporter's "
        "own thread, never on the request path.",
    )
    export_interval_s: float = Field(
        default=2.0, gt=0, le=60, description="How often ended spans are sent in a batch.",
    )
    max_queue_spans: int = Field(
        default=4096, ge=64,
        description="Ended spans held while the collector is slow or down; beyond this new "
        "spans are dropped (requests are never held up).",
    )
    max_batch_spans: int = Field(default=512, ge=1, description="Spans per export request.")
    engine_detail: Literal["none", "model", "worker", "all"] = Field(
        default="none",
        description="vLLM's collect_detailed_traces: extra engine timings, at a cost vLLM itself "
        "warns about; none keeps vLLM's one request span.",
    )

    @model_validator(mode="after")
    def _usable(self) -> TracingSettings:
        if not self.enabled:
            return self
        if not self.endpoint:
            raise ValueError("tracing.endpoint is required when tracing is enabled (the collector's "
                             f"OTLP/HTTP traces URL, e.g. http://otel-collector:4318{TRACES_PATH})")
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"tracing.endpoint must be an http:// or https:// URL, got {self.endpoint!r}")
        if parts.username or parts.password:
            raise ValueError("tracing.endpoint carries a credential; send it as a header with "
                             "OTEL_EXPORTER_OTLP_TRACES_HEADERS from a Secret instead")
        if parts.path in ("", "/"):
            raise ValueError(f"tracing.endpoint needs the signal path: {self.endpoint.rstrip('/')}"
                             f"{TRACES_PATH} (OTLP/HTTP exporters post to the URL as given)")
        if self.max_batch_spans > self.max_queue_spans:
            raise ValueError("tracing.max_batch_spans must not exceed tracing.max_queue_spans")
        return self
