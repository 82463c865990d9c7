"""The sizing planner: one model on one GPU class -> a SizingPlan.

`plan()` picks the smallest valid tensor-parallel degree that fits on one
node, then pipeline stages across nodes if none does, and explains a refusal
with ranked alternatives. All memory arithmetic is in cluster.sizing.memory and
cluster.sizing.kv_cache; this module decides and explains.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from cluster.catalog.cards import (
    KV_CACHE_DTYPES,
    ArchitectureShape,
    GpuClass,
    gpu_catalog,
)
from cluster.sizing import kv_cache, memory
from cluster.sizing.plan import (  # noqa: F401  (re-exported: the planner's public types)
    VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    SizingPlan,
    SizingRequest,
    serving_dtype,
)
from cluster.sizing.throughput import autoscaling_target, measured, roofline

#: Architectures the pinned vLLM no longer serves (vllm/model_executor/models/registry.py,
#: _PREVIOUSLY_SUPPORTED_MODELS): architecture -> last vLLM version that did.
VLLM_REMOVED_ARCHITECTURES = {"Plamo2ForCausalLM": "0.26.0"}
#: Preference among plans that use the same number of GPUs: higher precision first.
PRECISION_RANK = {"bf16": 0, "fp16": 0, "fp8": 1, "int8": 2, "awq": 3, "gptq": 3}
MAX_PIPELINE_STAGES = 16
AWQ_GPTQ_GROUP = 128


def valid_tensor_parallel_sizes(shape: ArchitectureShape, quantization: str, limit: int) -> list[int]:
    """TP degrees vLLM accepts for this shape, smallest first, up to `limit`."""
    result = []
    for tp in range(1, limit + 1):
        if shape.num_attention_heads % tp:
            continue  # ModelConfig.verify_with_parallel_config
        kv = shape.num_kv_heads
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            continue  # QKVParallelLinear: divide KV heads, or replicate them evenly
        if shape.intermediate_size % tp:
            continue  # MergedColumnParallelLinear divides the MLP
        if shape.mamba is not None and shape.mamba.num_heads % tp:
            continue  # Mamba heads are sharded like attention heads
        if quantization in ("awq", "gptq") and (
            (shape.intermediate_size // tp) % AWQ_GPTQ_GROUP
            or (shape.num_attention_heads * shape.head_dim // tp) % AWQ_GPTQ_GROUP
        ):
            continue  # row-parallel input slices must hold whole quantisation groups
        result.append(tp)
    return result


def default_batch_limits(gpu: GpuClass) -> tuple[int, int]:
    """vLLM 0.32's (max_num_seqs, max_num_batched_tokens) for the OpenAI server usage context.

    EngineArgs.get_batch_defaults: >= 70 GiB and not an A100 -> 1024 / 8192, else 256 / 2048.
    """
    if gpu.reported_memory_gib >= 70 and "a100" not in gpu.id:
        return 1024, 8192
    return 256, 2048


def _evaluate(req: SizingRequest, tp: int, pp: int, *, max_num_seqs: int) -> SizingPlan:
    shape, gpu = req.shape, req.gpu
    dtype_bytes = memory.DTYPE_BYTES[serving_dtype(req)]
    kv_bytes = 1 if req.kv_cache_dtype == "fp8" else dtype_bytes
    stages = memory.pipeline_stages(shape.num_layers, pp)
    weights = memory.stage_weights(req.params, shape, req.quantization, dtype_bytes, tp, stages)
    seqs, batched_tokens = max_num_seqs, default_batch_limits(gpu)[1]
    if req.overhead_bytes is not None:
        overhead = req.overhead_bytes
    else:
        overhead = memory.activation_peak_bytes(
            shape, tp=tp, max_num_batched_tokens=batched_tokens, max_num_seqs=seqs,
            dtype_bytes=dtype_bytes,
        ) + memory.runtime_overhead_bytes(tp * pp)
    budget = math.ceil(gpu.memory_bytes * req.gpu_memory_utilization)  # vllm request_memory
    available = [budget - w.bytes_per_gpu - overhead for w in weights]
    cache = kv_cache.layout(shape, tp=tp, stages=stages, kv_dtype_bytes=kv_bytes,
                            state_dtype_bytes=dtype_bytes, platform=kv_cache.GPU)
    in_flight = (2 if pp == 1 else pp) * batched_tokens  # async scheduling: 2 batches in flight
    cap = kv_cache.capacity(cache, available, req.max_model_len, sliding_window=shape.sliding_window,
                            in_flight_tokens=in_flight,
                            mamba_blocks=kv_cache.GPU.mamba_blocks_per_request)
    typical = req.typical_sequence_tokens or req.max_model_len
    held = cap.tokens // typical if cap.max_concurrency >= 1 else 0
    target = autoscaling_target(min(held, seqs)) if held else 1
    if req.pooling and held:
        # a pooling request is one forward pass over its input and frees its KV blocks at once:
        # what one step takes (max_num_batched_tokens of inputs) is what runs at a time
        target = autoscaling_target(max(1, min(held, seqs, batched_tokens // typical)))
    worst = max(range(len(weights)), key=lambda i: weights[i].bytes_per_gpu)
    used = [w.bytes_per_gpu + overhead + cap.num_blocks * b
            for w, b in zip(weights, cache.bytes_per_block, strict=True)]
    kv_token_gpu = sum(kv_cache.attention_bytes_per_token(shape, tp, kv_bytes)
                       for k in shape.layer_kinds() if k != "mamba") // pp
    estimate = roofline(gpu, gpus=tp * pp, pp=pp, weight_bytes_per_gpu=weights[worst].bytes_per_gpu,
                        kv_bytes_per_token_per_gpu=kv_token_gpu, params=req.params, batch=target,
                        context_tokens=req.mean_context_tokens or max(1, typical // 2),
                        quantization=req.quantization)
    if req.measured_decode_tokens_per_s:
        estimate = measured(estimate, req.measured_decode_tokens_per_s)
    plan = SizingPlan(
        request=req, tensor_parallel_size=tp, pipeline_parallel_size=pp, fits=False, reasons=[],
        notes=[], weight_bytes=memory.weight_bytes(req.params, shape, req.quantization, dtype_bytes),
        weight_bytes_per_gpu=weights[worst].bytes_per_gpu, overhead_bytes_per_gpu=overhead,
        budget_bytes_per_gpu=budget,
        kv_cache_bytes_per_gpu=cap.num_blocks * cache.bytes_per_block[worst],
        used_bytes_per_stage=used, sequences_held=held,
        kv_cache_bytes_per_token=kv_cache.bytes_per_token(shape, kv_bytes),
        kv_block_size=cache.block_size, num_blocks=cap.num_blocks, kv_cache_tokens=cap.tokens,
        max_concurrency=cap.max_concurrency, max_num_seqs=seqs,
        max_num_batched_tokens=batched_tokens, target_ongoing_requests=target, throughput=estimate,
    )
    memory_reasons = _memory_refusals(plan, available, cap)
    plan.memory_fits = not memory_reasons
    plan.reasons = _refusals(plan) + memory_reasons
    plan.notes = _notes(plan)
    plan.fits = not plan.reasons
    return plan


def _gib(n: float) -> str:
    return f"{n / memory.GIB:.1f} GiB"


def _refusals(plan: SizingPlan) -> list[str]:
    """Reasons more memory would not fix."""
    req, tp, pp = plan.request, plan.tensor_parallel_size, plan.pipeline_parallel_size
    reasons = []
    removed = VLLM_REMOVED_ARCHITECTURES.get(req.shape.hf_architecture)
    if removed:
        reasons.append(
            f"{req.shape.hf_architecture} is not served by the pinned vllm 0.32.0 (last supported in "
            f"{removed}); pin an older vLLM for this model or ask the vendor for a supported architecture"
        )
    if req.quantization not in req.allowed_quantizations:
        reasons.append(
            f"quantization {req.quantization} is not offered for {req.model} "
            f"(allowed: {', '.join(req.allowed_quantizations)})"
        )
    if tp not in valid_tensor_parallel_sizes(req.shape, req.quantization, tp):
        reasons.append(
            f"tensor_parallel_size {tp} is invalid for {req.model}: it must divide the "
            f"{req.shape.num_attention_heads} attention heads and the intermediate size, divide "
            f"or be a multiple of the {req.shape.num_kv_heads} KV heads"
            + (f", and leave whole {AWQ_GPTQ_GROUP}-wide {req.quantization} groups on every rank"
               if req.quantization in ("awq", "gptq") else "")
        )
    if pp == 1 and tp > req.node_gpus:
        reasons.append(
            f"tensor_parallel_size {tp} spans nodes ({req.node_gpus} {req.gpu.id} per node); "
            "keep TP within a node and add pipeline stages instead"
        )
    if req.context_length and req.max_model_len > req.context_length:
        reasons.append(
            f"max_model_len {req.max_model_len} exceeds the model's context length "
            f"{req.context_length}; lower --max-model-len"
        )
    return reasons


def _memory_refusals(plan: SizingPlan, available: list[int], cap: kv_cache.KvCapacity) -> list[str]:
    req, tp, pp = plan.request, plan.tensor_parallel_size, plan.pipeline_parallel_size
    reasons = []
    if min(available) <= 0:
        reasons.append(
            f"weights ({_gib(plan.weight_bytes_per_gpu)}) + overhead ({_gib(plan.overhead_bytes_per_gpu)}) "
            f"per GPU exceed {_gib(plan.budget_bytes_per_gpu)} ({req.gpu_memory_utilization:.2f} x "
            f"{req.gpu.reported_memory_gib} GiB) on {req.gpu.id} with TP={tp} PP={pp}; "
            f"{req.quantization} weights total {_gib(plan.weight_bytes)}"
        )
    elif cap.max_concurrency < 1:
        reasons.append(
            f"the KV cache ({cap.tokens} tokens) cannot hold one sequence of max_model_len "
            f"{req.max_model_len}; vLLM refuses to start. Lower --max-model-len, use --kv-cache-dtype fp8, "
            "or add GPUs"
        )
    elif req.concurrency and cap.max_concurrency < req.concurrency:
        reasons.append(
            f"the KV cache holds {cap.max_concurrency:.1f} sequences of {req.max_model_len} tokens, "
            f"fewer than the {req.concurrency} requested"
        )
    return reasons


def _notes(plan: SizingPlan) -> list[str]:
    req, notes = plan.request, []
    if req.quantization == "fp8" and not req.gpu.fp8_native:
        notes.append(f"{req.gpu.id} has no FP8 tensor cores: fp8 runs weight-only (W8A16, Marlin); "
                     "memory halves, compute does not speed up")
    if req.kv_cache_dtype == "fp8" and not req.gpu.fp8_native:
        notes.append("fp8 KV cache on Ampere is not supported by FlashAttention; vLLM picks another backend")
    if plan.gpus_per_replica > 1 and req.gpu.interconnect == "pcie":
        notes.append(f"{req.gpu.id} has no NVLink: tensor parallelism runs over PCIe and scales poorly")
    if plan.pipeline_parallel_size > 1:
        notes.append(f"replica spans {plan.nodes_per_replica} nodes: TP={plan.tensor_parallel_size} "
                     f"inside a node, {plan.pipeline_parallel_size} pipeline stages across nodes")
    if req.gpu.reported_memory_kind == "estimate":
        notes.append(f"{req.gpu.id} total memory {req.gpu.reported_memory_gib} GiB is an estimate; "
                     "replace it with the total_gpu_memory vLLM logs on first start")
    if req.pooling:
        notes.append("pooling model (embedding/rerank): no decode, so no KV cache for long answers; "
                     "the cache only holds the batch being embedded, concurrency is "
                     "max_num_batched_tokens / input tokens, and the decode figures do not apply")
    if req.shape.sliding_window and "sliding" in req.shape.layer_pattern:
        notes.append("sliding-window layers hold at most window + in-flight tokens per request")
    return notes


def _search(req: SizingRequest) -> SizingPlan:
    """Smallest TP on one node whose memory fits, else a full node's TP and the fewest stages.

    Only memory decides the degree: reasons that do not depend on it (an
    unsupported architecture, a disallowed quantisation) are reported on the
    plan the memory search picks.
    """
    if req.tensor_parallel_size:
        return _refine(req, req.tensor_parallel_size, 1)
    degrees = valid_tensor_parallel_sizes(req.shape, req.quantization, req.node_gpus)
    if not degrees:
        return _refine(req, 1, 1)
    for tp in degrees:
        candidate = _refine(req, tp, 1)
        if candidate.memory_fits:
            return candidate
    tp = degrees[-1]
    for pp in range(2, min(MAX_PIPELINE_STAGES, req.shape.num_layers) + 1):
        candidate = _refine(req, tp, pp)
        if candidate.memory_fits:
            return candidate
    return _refine(req, tp, 1)  # the closest single-node attempt, with its reasons


def _refine(req: SizingRequest, tp: int, pp: int) -> SizingPlan:
    """Evaluate (tp, pp) and choose max_num_seqs.

    Whether the degrees fit is decided at max_num_seqs = 1 (or the requested
    concurrency), where the sampler's profiling peak is smallest, so the
    decision is monotone in memory. max_num_seqs is then the largest value up
    to vLLM's default that still fits and that the KV cache holds at the
    typical sequence length; both conditions only fail more as it grows, so a
    binary search finds it.
    """
    if req.concurrency is not None:
        return _evaluate(req, tp, pp, max_num_seqs=req.concurrency)
    best = _evaluate(req, tp, pp, max_num_seqs=1)
    if not best.memory_fits:
        return best
    lo, hi = 2, min(default_batch_limits(req.gpu)[0], best.sequences_held)
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = _evaluate(req, tp, pp, max_num_seqs=mid)
        if candidate.memory_fits and candidate.sequences_held >= mid:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def plan(req: SizingRequest, *, alternatives: bool = True, gpus: tuple[GpuClass, ...] | None = None,
         limit: int = 6) -> SizingPlan:
    """Size `req`; when `alternatives`, list the cheapest fitting other configurations."""
    result = _search(req)
    if alternatives:
        result.alternatives = ranked_alternatives(req, gpus or gpu_catalog().gpus, limit=limit,
                                                  exclude=result if result.fits else None)
    return result


def ranked_alternatives(req: SizingRequest, gpus: tuple[GpuClass, ...], *, limit: int,
                        exclude: SizingPlan | None) -> list[dict[str, Any]]:
    """The best fitting plan of each GPU class, fewest GPUs first.

    Within a class the best plan uses the fewest GPUs, then the highest
    precision, then the model-dtype KV cache; across classes ties go to the
    smaller GPU.
    """
    def rank(p: SizingPlan) -> tuple:
        return (p.gpus_per_replica, PRECISION_RANK[p.request.quantization],
                p.request.kv_cache_dtype != "auto", p.request.gpu.memory_gb)

    best = []
    for gpu in gpus:
        fitting = []
        for quant in req.allowed_quantizations:
            for kv in KV_CACHE_DTYPES:
                candidate = replace(req, gpu=gpu, quantization=quant, kv_cache_dtype=kv,
                                    tensor_parallel_size=None, gpus_per_node=None)
                result = _search(candidate)
                if result.fits and (exclude is None or result.summary() != exclude.summary()):
                    fitting.append(result)
        if fitting:
            best.append(min(fitting, key=rank))
    best.sort(key=rank)
    return [p.summary() for p in best[:limit]]
