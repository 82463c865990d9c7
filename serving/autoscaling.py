"""Autoscaling model replicas from data-plane load.

Requests reach model replicas over the HTTP data plane, not through Serve
handles, so Serve's built-in signal (ongoing requests seen by handles) stays at
zero. Each replica reports its in-flight generation requests instead
(`DataPlaneLLMServer.record_autoscaling_stats`), plus its share of the
requests waiting for its model in the routers' admission queues (a replica
runs at most max_ongoing_requests, so beyond that demand shows only there),
and this policy asks for enough replicas that each holds about
`target_ongoing_requests` of them: a spike asks for every replica it needs at
once instead of one more per round.
Serve applies min/max bounds, upscale/downscale delays and smoothing on top
(ray.serve.autoscaling_policy._apply_autoscaling_config wraps every custom policy).

Scale from zero: a model at zero replicas has nobody to report. A router that
gets a request for it calls the deployment's Serve handle once
(serving/router/cold_start.py); that call waits in the handle's queue, and Serve
counts queued handle requests (`AutoscalingContext.total_queued_requests`, which
the controller keeps even with no replica). The policy adds them to the demand,
so it asks for at least one replica while anyone waits. With no traffic the
replica reports 0 and the policy asks for 0; Serve removes the last replica of a
min_replicas 0 model after the downscale delay.

Ray Serve LLM's own default target is 1e9 (scaling effectively off); the
target here comes from the spec through the planner (cluster/sizing): 80 % of
the requests a replica runs at once.
"""

from __future__ import annotations

import math
from typing import Any

#: The custom autoscaling metric each model replica reports (its in-flight data-plane requests).
ONGOING_METRIC = "govllm_data_plane_ongoing"
#: Its share of the requests waiting for its model in the routers' admission queues.
QUEUED_METRIC = "govllm_router_queued"


def desired_replicas(total_ongoing: float, target_per_replica: float) -> int:
    """Replicas needed for `total_ongoing` requests at `target_per_replica` each."""
    if target_per_replica <= 0:
        raise ValueError("target_ongoing_requests must be positive")
    return math.ceil(max(total_ongoing, 0.0) / target_per_replica)


def data_plane_policy(ctx: Any) -> tuple[int, dict]:
    """Replicas for the in-flight data-plane requests plus the requests queued at handles."""
    metrics = ctx.aggregated_metrics or {}
    per_replica = metrics.get(ONGOING_METRIC) or {}
    in_routers = metrics.get(QUEUED_METRIC) or {}
    queued = float(ctx.total_queued_requests or 0.0)  # wake-up calls for a model at zero
    if not per_replica and queued <= 0:
        # No replica has reported and nobody waits: hold the current target (replicas may
        # be starting) instead of scaling down.
        return ctx.target_num_replicas, {}
    total = float(sum(per_replica.values())) + float(sum(in_routers.values())) + queued
    desired = desired_replicas(total, float(ctx.config.target_ongoing_requests))
    if queued > 0:
        desired = max(desired, 1)
    if ctx.current_num_replicas < ctx.target_num_replicas:
        # A scale-up is in progress: do not cancel it on a dip while its engines start (they
        # have paid most of their cost, and demand measured on fewer replicas is capped by
        # them); the downscale delay applies once they run. Seen on 2 cores: a 1 -> 3 decision
        # undone after 70 s of engine start by demand hovering at the 2/3 boundary.
        desired = max(desired, ctx.target_num_replicas)
    return desired, {}
