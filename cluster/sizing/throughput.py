"""Decode throughput of a replica (roofline) and replica bounds from expected load.

Decode is memory-bound: every step reads each GPU's weights once plus the KV
cache of every sequence in the batch. With per-GPU bytes W (weights) and K
(KV bytes per token of context), batch B and mean context c:

    step = max((pp*W + B*c*K) / (bandwidth * BANDWIDTH_EFFICIENCY),
               2 * params_per_gpu * B / (tflops * COMPUTE_EFFICIENCY))
    decode tokens/s of the replica = B / step

(with pipeline parallelism each GPU re-reads its weights once per micro-batch,
so W counts pp times). Prefill is compute-bound: 2 x params FLOPs per
prompt token. A measured decode rate replaces the roofline when given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.catalog.cards import GpuClass

#: Achieved fraction of peak HBM bandwidth in decode (typical of vLLM at moderate batch).
BANDWIDTH_EFFICIENCY = 0.6
#: Achieved fraction of dense BF16 peak in prefill and in compute-bound decode.
COMPUTE_EFFICIENCY = 0.4
#: Scale down before KV is full: the autoscaling target is this share of what a replica holds.
TARGET_FILL = 0.8


@dataclass(frozen=True)
class ReplicaThroughput:
    batch: int
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    source: str  # "roofline" or "measured"

    def requests_per_s(self, input_tokens: int, output_tokens: int) -> float:
        """Requests a replica completes per second with prompt and answer of these sizes."""
        seconds = input_tokens / self.prefill_tokens_per_s + output_tokens / self.decode_tokens_per_s
        return 1.0 / seconds


def roofline(gpu: GpuClass, *, gpus: int, pp: int, weight_bytes_per_gpu: int,
             kv_bytes_per_token_per_gpu: int, params: int, batch: int,
             context_tokens: int, quantization: str = "bf16") -> ReplicaThroughput:
    """Roofline decode and prefill rates of one replica of `gpus` GPUs in `pp` stages."""
    bandwidth = gpu.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY
    flops = gpu.bf16_dense_tflops * 1e12 * COMPUTE_EFFICIENCY * _compute_scale(gpu, quantization)
    # With pp micro-batches in flight each GPU re-reads its weights once per micro-batch,
    # and reads its own layers' KV once per sequence.
    step_bytes = pp * weight_bytes_per_gpu + batch * context_tokens * kv_bytes_per_token_per_gpu
    memory_s = step_bytes / bandwidth
    compute_s = 2 * params * batch / (flops * gpus)
    step = max(memory_s, compute_s)
    return ReplicaThroughput(
        batch=batch,
        decode_tokens_per_s=batch / step,
        prefill_tokens_per_s=flops * gpus / (2 * params),
        source="roofline",
    )


def _compute_scale(gpu: GpuClass, quantization: str) -> float:
    """8-bit activations double tensor-core throughput: FP8 on Ada/Hopper, INT8 from Ampere on."""
    if quantization == "int8" or (quantization == "fp8" and gpu.fp8_native):
        return 2.0
    return 1.0


def measured(estimate: ReplicaThroughput, decode_tokens_per_s: float) -> ReplicaThroughput:
    """The estimate with its decode rate replaced by a measured one."""
    return ReplicaThroughput(
        batch=estimate.batch,
        decode_tokens_per_s=decode_tokens_per_s,
        prefill_tokens_per_s=estimate.prefill_tokens_per_s,
        source="measured",
    )


def autoscaling_target(sequences_held: int) -> int:
    """target_ongoing_requests for a replica that holds `sequences_held` sequences."""
    return max(1, math.floor(sequences_held * TARGET_FILL))


@dataclass(frozen=True)
class ReplicaPlan:
    peak_requests_per_s: float
    requests_per_s_per_replica: float
    min_replicas: int
    max_replicas: int


def replica_bounds(*, peak_requests_per_s: float, baseline_fraction: float,
                   requests_per_s_per_replica: float, floor: int) -> ReplicaPlan:
    """Replicas for the peak (max) and for the always-present baseline (min)."""
    def needed(rate: float) -> int:
        return max(floor, math.ceil(rate / requests_per_s_per_replica - 1e-9))

    return ReplicaPlan(
        peak_requests_per_s=peak_requests_per_s,
        requests_per_s_per_replica=requests_per_s_per_replica,
        min_replicas=needed(peak_requests_per_s * baseline_fraction),
        max_replicas=needed(peak_requests_per_s),
    )
