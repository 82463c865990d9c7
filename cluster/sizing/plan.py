"""What the planner is asked (SizingRequest) and what it answers (SizingPlan)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cluster.catalog.cards import QUANTIZATIONS, ArchitectureShape, GpuClass
from cluster.sizing.throughput import ReplicaThroughput

#: vllm 0.32.0 CacheConfig.gpu_memory_utilization default (vllm/config/cache.py).
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
#: Engine `quantization` values per weight format; bf16/fp16 checkpoints need none.
ENGINE_QUANTIZATION = {"fp8": "fp8", "int8": "compressed-tensors", "awq": "awq_marlin",
                       "gptq": "gptq_marlin"}


@dataclass(frozen=True)
class SizingRequest:
    """What to size: a known architecture and parameter count on one GPU class."""

    model: str
    shape: ArchitectureShape
    params: int
    gpu: GpuClass
    max_model_len: int
    quantization: str = "bf16"
    kv_cache_dtype: str = "auto"
    concurrency: int | None = None
    gpu_memory_utilization: float = VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
    tensor_parallel_size: int | None = None
    gpus_per_node: int | None = None
    allowed_quantizations: tuple[str, ...] = QUANTIZATIONS
    context_length: int | None = None
    typical_sequence_tokens: int | None = None  # mean prompt + answer, when load is known
    mean_context_tokens: int | None = None  # mean context while decoding (prompt + half the answer)
    overhead_bytes: int | None = None  # measured non-KV overhead per GPU (replaces the estimate)
    measured_decode_tokens_per_s: float | None = None
    pooling: bool = False  # an embedding or rerank model: inputs only, nothing generated

    @property
    def node_gpus(self) -> int:
        return self.gpus_per_node or self.gpu.max_gpus_per_node


@dataclass
class SizingPlan:
    """The planner's answer for one (model, GPU class, quantisation, degrees)."""

    request: SizingRequest
    tensor_parallel_size: int
    pipeline_parallel_size: int
    fits: bool
    reasons: list[str]
    notes: list[str]
    weight_bytes: int
    weight_bytes_per_gpu: int
    overhead_bytes_per_gpu: int
    budget_bytes_per_gpu: int
    kv_cache_bytes_per_gpu: int
    used_bytes_per_stage: list[int]  # weights + overhead + KV cache on each stage's GPUs
    sequences_held: int  # sequences of typical length (max_model_len if unknown) the KV holds
    kv_cache_bytes_per_token: int
    kv_block_size: int
    num_blocks: int
    kv_cache_tokens: int
    max_concurrency: float
    max_num_seqs: int
    max_num_batched_tokens: int
    target_ongoing_requests: int
    throughput: ReplicaThroughput
    memory_fits: bool = False
    alternatives: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def nodes_per_replica(self) -> int:
        return math.ceil(self.gpus_per_replica / self.request.node_gpus)

    @property
    def max_concurrent_sequences(self) -> int:
        return math.floor(self.max_concurrency)

    def engine_kwargs(self) -> dict[str, Any]:
        """vLLM engine arguments this plan sets (GPU deployments)."""
        req = self.request
        kwargs: dict[str, Any] = {
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "gpu_memory_utilization": req.gpu_memory_utilization,
            "max_model_len": req.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "dtype": serving_dtype(req),
            "kv_cache_dtype": req.kv_cache_dtype,
        }
        if req.quantization in ENGINE_QUANTIZATION:
            kwargs["quantization"] = ENGINE_QUANTIZATION[req.quantization]
        return kwargs

    def summary(self) -> dict[str, Any]:
        """The short form used in alternatives."""
        req = self.request
        return {
            "gpu": req.gpu.id,
            "quantization": req.quantization,
            "kv_cache_dtype": req.kv_cache_dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "gpus_per_replica": self.gpus_per_replica,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrent_sequences": self.max_concurrent_sequences,
        }

    def to_json(self) -> dict[str, Any]:
        req = self.request
        return {
            "model": req.model,
            **self.summary(),
            "nodes_per_replica": self.nodes_per_replica,
            "params": req.params,
            "weight_bytes": self.weight_bytes,
            "weight_bytes_per_gpu": self.weight_bytes_per_gpu,
            "overhead_bytes_per_gpu": self.overhead_bytes_per_gpu,
            "budget_bytes_per_gpu": self.budget_bytes_per_gpu,
            "kv_cache_bytes_per_gpu": self.kv_cache_bytes_per_gpu,
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token,
            "kv_cache_block_size": self.kv_block_size,
            "kv_cache_blocks": self.num_blocks,
            "sequences_held_at_typical_length": self.sequences_held,
            "max_model_len": req.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "gpu_memory_utilization": req.gpu_memory_utilization,
            "target_ongoing_requests": self.target_ongoing_requests,
            "decode_tokens_per_s": round(self.throughput.decode_tokens_per_s, 1),
            "decode_tokens_per_s_source": self.throughput.source,
            "engine_kwargs": self.engine_kwargs(),
            "fits": self.fits,
            "reasons": self.reasons,
            "notes": self.notes,
            "alternatives": self.alternatives,
        }


def serving_dtype(req: SizingRequest) -> str:
    """float32 checkpoints are served in bfloat16 on GPUs (vLLM's dtype=auto does the same)."""
    return "bfloat16" if req.shape.dtype == "float32" else req.shape.dtype
