"""Per-GPU memory of one vLLM worker: weights, activation peak and runtime overhead.

vLLM 0.32.0 (vllm/v1/worker/gpu_worker.py `determine_available_memory`,
vllm/v1/worker/utils.py `request_memory`, vllm/utils/mem_utils.py
`memory_profiling`) gives the KV cache of each worker

    total x gpu_memory_utilization
      - (weights + non-torch memory growth + peak activation headroom)   [profiled]
      - CUDA-graph memory estimate    [applied: VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1 by default]

Weights are computed exactly from the parameter count and the quantisation.
The other three are *estimates* calibrated on published vLLM profiling logs
(see docs/sizing.md, "Error bounds"); `overhead_bytes` can be replaced by the
number a real start logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cluster.catalog.cards import ArchitectureShape

GIB = 2**30

#: Bytes per parameter of linear layers. Embeddings and lm_head stay in the model dtype
#: (vLLM's fp8/int8/AWQ/GPTQ methods skip them). AWQ/GPTQ int4 with group size 128 store
#: a 2-byte scale and a 4-bit zero point per group: 0.5 + 2.5 / 128.
LINEAR_BYTES_PER_PARAM: dict[str, float] = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "awq": 0.5 + 2.5 / 128,
    "gptq": 0.5 + 2.5 / 128,
}
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

#: Non-torch memory a worker adds after its baseline snapshot (cuBLAS/attention workspaces),
#: and what NCCL communicators and custom all-reduce buffers add when the worker has peers.
NON_TORCH_BASE_BYTES = int(0.75 * GIB)
NON_TORCH_DISTRIBUTED_BYTES = int(0.75 * GIB)
#: CUDA graph pool vLLM estimates and reserves (captures up to 512 tokens by default).
CUDAGRAPH_BYTES = int(0.75 * GIB)
#: The sampler's dummy run on max_num_seqs x vocab float32 logits (top-k/top-p sort, softmax,
#: int64 indices) peaks near this many logits-sized buffers.
SAMPLER_BUFFERS = 8


@dataclass(frozen=True)
class StageWeights:
    layers: range
    bytes_per_gpu: int


def pipeline_stages(num_layers: int, pp: int) -> list[range]:
    """Layer ranges per stage, as vllm.distributed.utils.get_pp_indices partitions them."""
    per = num_layers // pp
    parts = [per] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    starts = [sum(parts[:i]) for i in range(pp)]
    return [range(s, s + n) for s, n in zip(starts, parts, strict=True)]


def embedding_params(shape: ArchitectureShape) -> int:
    return shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)


def weight_bytes(params: int, shape: ArchitectureShape, quantization: str, dtype_bytes: int) -> int:
    """All weights of the model, as stored for serving."""
    embed = embedding_params(shape)
    return int((params - embed) * LINEAR_BYTES_PER_PARAM[quantization] + embed * dtype_bytes)


def stage_weights(params: int, shape: ArchitectureShape, quantization: str, dtype_bytes: int,
                  tp: int, stages: Sequence[range]) -> list[StageWeights]:
    """Weight bytes on each GPU of each pipeline stage.

    Linear layers split TP-ways (the K/V projections are replicated when TP
    exceeds the KV heads); the vocabulary-parallel embedding sits on the first
    stage and lm_head on the last (both on every stage of one when PP = 1 and
    the embeddings are tied).
    """
    bpp = LINEAR_BYTES_PER_PARAM[quantization]
    body_per_layer = (params - embedding_params(shape)) / shape.num_layers
    kv_share = shape.num_kv_heads / tp
    kv_extra = shape.hidden_size * shape.head_dim * 2 * (max(1.0, kv_share) - kv_share)
    vocab_slice = shape.vocab_size * shape.hidden_size / tp * dtype_bytes
    kinds = shape.layer_kinds()
    result = []
    for index, layers in enumerate(stages):
        attention = sum(1 for i in layers if kinds[i] != "mamba")
        linear = len(layers) * body_per_layer / tp + attention * kv_extra
        first, last = index == 0, index == len(stages) - 1
        if len(stages) == 1 and shape.tie_word_embeddings:
            vocab = vocab_slice
        else:
            vocab = vocab_slice * (int(first) + int(last))
        result.append(StageWeights(layers, int(linear * bpp + vocab)))
    return result


def activation_peak_bytes(shape: ArchitectureShape, *, tp: int, max_num_batched_tokens: int,
                          max_num_seqs: int, dtype_bytes: int) -> int:
    """Peak torch memory of vLLM's profiling run beyond the weights (estimate).

    The larger of the dummy forward pass over max_num_batched_tokens (residual,
    QKV, attention output and the gated MLP's intermediates live at once) and
    the dummy sampler run over max_num_seqs rows of float32 logits.
    """
    kv_rank = max(1, shape.num_kv_heads // tp)
    width = (
        2 * shape.hidden_size
        + (shape.num_attention_heads // tp + 2 * kv_rank) * shape.head_dim
        + shape.num_attention_heads // tp * shape.head_dim
        + 3 * shape.intermediate_size // tp
    )
    forward = max_num_batched_tokens * width * dtype_bytes
    sampler = max_num_seqs * shape.vocab_size * 4 * SAMPLER_BUFFERS
    return max(forward, sampler)


def runtime_overhead_bytes(world_size: int, *, cuda_graphs: bool = True) -> int:
    """Non-torch memory and CUDA-graph reservation of one worker (estimate)."""
    non_torch = NON_TORCH_BASE_BYTES + (NON_TORCH_DISTRIBUTED_BYTES if world_size > 1 else 0)
    return non_torch + (CUDAGRAPH_BYTES if cuda_graphs else 0)
