"""KV-cache pages, groups and capacity, computed the way vLLM 0.32.0 allocates them.

Given the bytes a worker has for the KV cache, vLLM (V1 engine) does this
(vllm/v1/core/kv_cache_utils.py, vllm/v1/kv_cache_interface.py,
vllm/platforms/interface.py `_align_hybrid_block_size`):

* page of one attention layer = block_size x KV heads on this rank x
  (head_size + head_size_v) x dtype bytes, KV heads on a rank being
  max(1, KV heads // TP) (replicated when TP exceeds them);
* a Mamba layer keeps one state per request (conv + SSM), padded to the
  attention page; the attention block size is raised until its page holds a
  Mamba state;
* layers are grouped (one group when all layers are alike; otherwise groups of
  equal size per layer type, `_get_kv_cache_groups_uniform_page_size`), all
  groups drawing blocks from one pool; bytes per block = page x the largest
  group's layer count on this worker;
* num_blocks = available // bytes_per_block (the minimum over pipeline stages);
* a request at max_model_len takes cdiv(len, block) blocks per full-attention
  group, cdiv(min(window - 1 + in-flight tokens, len), block) + 1 per
  sliding-window group, and 1 (2 with prefix caching) per Mamba group;
* capacity in tokens = int(num_blocks / blocks per request x max_model_len),
  the number vLLM logs as "KV cache size: N tokens" and stores in
  cache_config.kv_cache_size_tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cluster.catalog.cards import ArchitectureShape, LayerKind


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class CachePlatform:
    """What differs between vLLM's GPU and CPU KV caches."""

    name: str
    block_size: int  # default attention block size (CacheConfig / platform)
    kernel_block_size: int  # smallest kernel block of the attention backend
    hybrid_allocator: bool  # hybrid KV cache manager: sliding-window groups free old blocks
    mamba_blocks_per_request: int  # 2 in prefix-caching "align" mode (the default), else 1


#: FlashAttention backend on CUDA: block 16 (CacheConfig.DEFAULT_BLOCK_SIZE), hybrid manager on,
#: prefix caching on (so Mamba groups hold 2 blocks per request).
GPU = CachePlatform("gpu", block_size=16, kernel_block_size=16, hybrid_allocator=True,
                    mamba_blocks_per_request=2)
#: vllm/platforms/cpu.py sets block_size 128; CPU attention supports MultipleOf(32) kernel blocks;
#: the hybrid manager is disabled on CPU (sliding layers are then cached like full ones).
CPU = CachePlatform("cpu", block_size=128, kernel_block_size=32, hybrid_allocator=False,
                    mamba_blocks_per_request=2)


@dataclass(frozen=True)
class KvCacheLayout:
    """Block geometry of one model replica (all stages)."""

    block_size: int
    page_bytes: int  # every layer's page, after padding
    groups: tuple[tuple[LayerKind, tuple[int, ...]], ...]  # (kind, layer indices)
    bytes_per_block: tuple[int, ...]  # per pipeline stage

    def blocks_per_request(self, max_model_len: int, *, sliding_window: int | None,
                           in_flight_tokens: int, mamba_blocks: int) -> int:
        total = 0
        for kind, _ in self.groups:
            if kind == "full":
                total += cdiv(max_model_len, self.block_size)
            elif kind == "sliding":
                assert sliding_window is not None
                held = min(sliding_window - 1 + in_flight_tokens, max_model_len)
                total += cdiv(held, self.block_size) + 1
            else:
                total += mamba_blocks
        return total


@dataclass(frozen=True)
class KvCapacity:
    num_blocks: int
    blocks_per_request: int
    max_concurrency: float  # requests of max_model_len tokens
    tokens: int  # vLLM's "KV cache size: N tokens"


def mamba_state_bytes(shape: ArchitectureShape, tp: int, state_dtype_bytes: int) -> int:
    """One Mamba2 layer's per-request state on one rank (conv + SSM), vLLM's mamba2_state_shape."""
    m = shape.mamba
    if m is None:
        return 0
    groups = m.n_groups + (0 if m.n_groups % tp == 0 else tp - m.n_groups)
    conv_dim = m.num_heads * m.head_dim + 2 * groups * m.d_state
    conv = conv_dim // tp * (m.d_conv - 1)
    ssm = m.num_heads // tp * m.head_dim * m.d_state
    return (conv + ssm) * state_dtype_bytes


def attention_bytes_per_token(shape: ArchitectureShape, tp: int, kv_dtype_bytes: int) -> int:
    """K and V of one token in one attention layer on one rank."""
    return max(1, shape.num_kv_heads // tp) * shape.head_dim * 2 * kv_dtype_bytes


def _block_size(shape: ArchitectureShape, tp: int, kv_dtype_bytes: int, state_dtype_bytes: int,
                platform: CachePlatform) -> int:
    block = platform.block_size
    if shape.mamba is None or "mamba" not in shape.layer_pattern:
        return block
    per_token = attention_bytes_per_token(shape, tp, kv_dtype_bytes)
    align = max(platform.kernel_block_size, block)
    needed = align * cdiv(mamba_state_bytes(shape, tp, state_dtype_bytes), align * per_token)
    needed = platform.kernel_block_size * cdiv(needed, platform.kernel_block_size)
    return max(block, needed)


def _groups(kinds: Sequence[LayerKind]) -> tuple[tuple[LayerKind, tuple[int, ...]], ...]:
    buckets: dict[LayerKind, list[int]] = {}
    for index, kind in enumerate(kinds):
        buckets.setdefault(kind, []).append(index)
    if len(buckets) == 1:
        kind, layers = next(iter(buckets.items()))
        return ((kind, tuple(layers)),)
    sizes = [len(layers) for layers in buckets.values()]
    group_size = max(sizes) if max(sizes) < min(sizes) * 1.5 else min(sizes)
    groups = []
    for kind, layers in buckets.items():
        count = cdiv(len(layers), group_size)
        groups.extend((kind, tuple(layers[i::count])) for i in range(count))
    return tuple(groups)


def layout(shape: ArchitectureShape, *, tp: int, stages: Sequence[range], kv_dtype_bytes: int,
           state_dtype_bytes: int, platform: CachePlatform) -> KvCacheLayout:
    """The KV-cache geometry for `shape` split TP-ways and into pipeline `stages` of layers."""
    kinds = list(shape.layer_kinds())
    if not platform.hybrid_allocator:
        kinds = ["full" if k == "sliding" else k for k in kinds]
    block = _block_size(shape, tp, kv_dtype_bytes, state_dtype_bytes, platform)
    page = block * attention_bytes_per_token(shape, tp, kv_dtype_bytes)
    groups = _groups(kinds)
    per_stage = tuple(
        page * max(sum(1 for i in layers if i in stage) for _, layers in groups)
        for stage in stages
    )
    return KvCacheLayout(block_size=block, page_bytes=page, groups=groups, bytes_per_block=per_stage)


def capacity(cache: KvCacheLayout, available_bytes: Sequence[int], max_model_len: int, *,
             sliding_window: int | None, in_flight_tokens: int,
             mamba_blocks: int) -> KvCapacity:
    """Blocks, concurrency and tokens given each pipeline stage's KV bytes per worker.

    Every worker gets the smallest stage's block count (vLLM unifies num_blocks).
    """
    num_blocks = min(
        max(avail, 0) // per_block
        for avail, per_block in zip(available_bytes, cache.bytes_per_block, strict=True)
    )
    per_request = cache.blocks_per_request(
        max_model_len, sliding_window=sliding_window, in_flight_tokens=in_flight_tokens,
        mamba_blocks=mamba_blocks,
    )
    concurrency = num_blocks / per_request
    return KvCapacity(num_blocks=num_blocks, blocks_per_request=per_request,
                      max_concurrency=concurrency, tokens=int(concurrency * max_model_len))


def bytes_per_token(shape: ArchitectureShape, kv_dtype_bytes: int) -> int:
    """KV bytes one token adds across the whole model (all layers, all KV heads, no replication).

    Mamba layers add nothing per token (their state is per request); sliding
    layers are counted as if the window were not yet full.
    """
    attention_layers = sum(1 for k in shape.layer_kinds() if k != "mamba")
    return attention_layers * shape.num_kv_heads * shape.head_dim * 2 * kv_dtype_bytes


def capacity_for_budget(shape: ArchitectureShape, budget_bytes: int, max_model_len: int, *,
                        platform: CachePlatform, kv_dtype_bytes: int, state_dtype_bytes: int,
                        tp: int = 1, in_flight_tokens: int = 0) -> KvCapacity:
    """Capacity of one worker holding the whole model with `budget_bytes` of KV cache.

    This is what vLLM-CPU allocates for VLLM_CPU_KVCACHE_SPACE (or
    kv_cache_memory_bytes), and what a GPU worker allocates once its available
    memory is known.
    """
    cache = layout(shape, tp=tp, stages=[range(shape.num_layers)], kv_dtype_bytes=kv_dtype_bytes,
                   state_dtype_bytes=state_dtype_bytes, platform=platform)
    return capacity(cache, [budget_bytes], max_model_len, sliding_window=shape.sliding_window,
                    in_flight_tokens=in_flight_tokens,
                    mamba_blocks=platform.mamba_blocks_per_request)
