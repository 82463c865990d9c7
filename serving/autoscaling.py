"""Autoscaling model replicas from data-plane load.

Requests reach model replicas over the HTTP data plane, not through Serve
handles, so Serve's built-in signal (ongoing requests seen by handles) stays at
zero. Each replica reports its in-flight generation requests instead
(`DataPlaneLLMServer.record_autoscaling_stats`), and this policy asks for
enough replicas that each holds about `target_ongoing_requests` of them.
Serve applies min/max bounds, upscale/downscale delays and smoothing on top.

Ray Serve LLM's own default target is 1e9 (scaling effectively off); the
target here comes from the spec, and the sizing planner derives it from the
concurrent sequences a replica can hold.
"""

from __future__ import annotations

import math
from typing import Any

#: The custom autoscaling metric each model replica reports (its in-flight data-plane requests).
ONGOING_METRIC = "govllm_data_plane_ongoing"


def desired_replicas(total_ongoing: float, target_per_replica: float) -> int:
    """Replicas needed for `total_ongoing` requests at `target_per_replica` each."""
    if target_per_replica <= 0:
        raise ValueError("target_ongoing_requests must be positive")
    return math.ceil(max(total_ongoing, 0.0) / target_per_replica)


def data_plane_policy(ctx: Any) -> tuple[int, dict]:
    metrics = ctx.aggregated_metrics or {}
    per_replica = metrics.get(ONGOING_METRIC)
    if not per_replica:
        # No replica has reported yet: hold the current target instead of scaling down.
        return ctx.target_num_replicas, {}
    total = float(sum(per_replica.values()))
    return desired_replicas(total, float(ctx.config.target_ongoing_requests)), {}
