"""The spec's `autoscaling` section: how quickly Ray Serve acts on govllm's scaling decisions.

What a replica should carry (the autoscaling target) is not typed here: the planner derives it
(cluster/sizing/throughput.py `autoscaling_target`, shown by `govllm plan`). These settings only
say how long a decision must hold before Serve acts on it and how much history it looks at;
each unset one keeps Ray Serve's own default (upscale 30 s, downscale 600 s, look-back 30 s,
metrics every 10 s), which suits production: scaling a GPU replica costs minutes of loading.
"""

from __future__ import annotations

from pydantic import Field

from serving.strict import StrictModel


class AutoscalingSpec(StrictModel):
    """Ray Serve's autoscaling delays for every model deployment (unset: Serve's default)."""

    upscale_delay_s: float | None = Field(
        default=None, ge=0,
        description="A scale-up decision must hold this long before replicas are added "
        "(Serve default 30 s). Scaling up from zero replicas never waits.",
    )
    downscale_delay_s: float | None = Field(
        default=None, ge=0,
        description="A scale-down decision must hold this long before replicas are removed, "
        "including the last one of a scale-to-zero model (Serve default 600 s).",
    )
    look_back_period_s: float | None = Field(
        default=None, gt=0,
        description="Window over which in-flight requests are averaged (Serve default 30 s).",
    )
    metrics_interval_s: float | None = Field(
        default=None, gt=0,
        description="How often each replica reports its in-flight requests to Serve's "
        "controller (Serve default 10 s).",
    )

    def serve_options(self) -> dict[str, float]:
        """The set values, as Ray Serve AutoscalingConfig keys."""
        return {k: v for k, v in self.model_dump().items() if v is not None}
