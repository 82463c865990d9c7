"""KV-cache bytes, pages, groups and capacity: hand calculations, published figures, vLLM's own code.

The cross-checks at the bottom call vLLM 0.32's KV-cache classes and functions
(pure Python, no engine) with the same layers and compare.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cluster.catalog.cards import ArchitectureShape, MambaShape, model_catalog
from cluster.sizing import kv_cache
from cluster.sizing.memory import pipeline_stages

GIB = 2**30


def catalog_shape(model_id: str) -> ArchitectureShape:
    return model_catalog().get(model_id).architecture.resolve()


def shape(**overrides) -> ArchitectureShape:
    base = dict(hf_architecture="LlamaForCausalLM", num_layers=4, hidden_size=512, num_attention_heads=8,
                num_kv_heads=2, head_dim=64, intermediate_size=1024, vocab_size=1000,
                tie_word_embeddings=False, dtype="bfloat16")
    return ArchitectureShape(**{**base, **overrides})


PLAMO2_1B = catalog_shape("plamo-2-1b")


@pytest.mark.parametrize(
    "model_id, kv_bytes, expected",
    [
        # layers x KV heads x head_dim x (K, V) x bytes
        ("llama-3.1-70b", 2, 80 * 8 * 128 * 2 * 2),  # 320 KiB per token, the published figure
        ("llama-3.1-70b", 1, 80 * 8 * 128 * 2 * 1),  # fp8 KV cache halves it
        ("llama-3.1-8b", 2, 128 * 1024),  # 128 KiB per token
        ("cohere-command-r-v01", 2, 40 * 64 * 128 * 4),  # no GQA: 1.25 MiB per token
        ("cohere-command-r-08-2024", 2, 40 * 8 * 128 * 4),  # GQA 64/8: 8x less than v01
        ("sarashina2.2-3b", 2, 32 * 8 * 160 * 4),  # head_dim 160
        ("plamo-2-1b", 2, 8 * 1 * 128 * 4),  # only the 8 attention layers grow with context
    ],
)
def test_bytes_per_token_matches_hand_calculation(model_id, kv_bytes, expected):
    assert kv_cache.bytes_per_token(catalog_shape(model_id), kv_bytes) == expected


def test_uniform_capacity_by_hand():
    # 3 layers, 2 KV heads of 64, float32, CPU block 128: page 128*2*64*2*4 = 131072 B,
    # block 3 pages; 1 GiB -> 2730 blocks; a 1000-token request takes cdiv(1000, 128) = 8 blocks.
    s = shape(num_layers=3, hidden_size=256, num_attention_heads=4, num_kv_heads=2, dtype="float32")
    cap = kv_cache.capacity_for_budget(s, GIB, 1000, platform=kv_cache.CPU, kv_dtype_bytes=4,
                                       state_dtype_bytes=4)
    assert (cap.num_blocks, cap.blocks_per_request) == (2730, 8)
    assert cap.max_concurrency == 2730 / 8
    assert cap.tokens == int(2730 / 8 * 1000) == 341250


def test_kv_heads_replicate_when_tp_exceeds_them():
    s = catalog_shape("llama-3.1-70b")  # 8 KV heads
    per_rank = [kv_cache.attention_bytes_per_token(s, tp, 2) for tp in (1, 8, 16, 32)]
    assert per_rank == [8 * 128 * 4, 1 * 128 * 4, 1 * 128 * 4, 1 * 128 * 4]
    # TP=16 holds every KV head twice: twice the bytes of TP=8 across the replica
    assert 16 * per_rank[2] == 2 * 8 * per_rank[1]


def test_plamo2_hybrid_block_size_and_groups_by_hand():
    # Mamba state per layer (TP 1, bf16): conv 32*128 x (4-1) + SSM 32 x 128 x 64 = 548,864 B.
    assert kv_cache.mamba_state_bytes(PLAMO2_1B, 1, 2) == (4096 * 3 + 32 * 128 * 64) * 2 == 548864
    # Attention token page is 1 head x 128 x 2 x 2 = 512 B; the block grows to
    # 16 * cdiv(548864, 16 * 512) = 1072 tokens so one attention page holds one Mamba state.
    cache = kv_cache.layout(PLAMO2_1B, tp=1, stages=[range(16)], kv_dtype_bytes=2,
                            state_dtype_bytes=2, platform=kv_cache.GPU)
    assert cache.block_size == 1072 and cache.page_bytes == 1072 * 512 == 548864
    assert [(kind, len(layers)) for kind, layers in cache.groups] == [("mamba", 8), ("full", 8)]
    assert cache.bytes_per_block == (8 * 548864,)
    # an 8192-token request: cdiv(8192, 1072) = 8 attention blocks + 2 Mamba blocks (prefix caching)
    assert cache.blocks_per_request(8192, sliding_window=None, in_flight_tokens=0, mamba_blocks=2) == 10


def test_sliding_window_groups_and_blocks_by_hand():
    # 12 layers, 5 sliding : 1 full (Gemma 3 style). 10 sliding + 2 full -> group size 2:
    # 5 sliding groups and 1 full group, each of 2 layers.
    s = shape(num_layers=12, layer_pattern=("sliding",) * 5 + ("full",), sliding_window=1024)
    cache = kv_cache.layout(s, tp=1, stages=[range(12)], kv_dtype_bytes=2, state_dtype_bytes=2,
                            platform=kv_cache.GPU)
    assert sorted(len(layers) for _, layers in cache.groups) == [2] * 6
    page = 16 * 2 * 64 * 2 * 2
    assert cache.bytes_per_block == (2 * page,)
    # 32k request: full group cdiv(32768, 16) = 2048 blocks; each sliding group holds
    # window - 1 + in-flight tokens: cdiv(1023 + 4096, 16) + 1 = 321 blocks.
    per_request = cache.blocks_per_request(32768, sliding_window=1024, in_flight_tokens=4096,
                                           mamba_blocks=2)
    assert per_request == 2048 + 5 * 321
    # the CPU (no hybrid manager) caches sliding layers like full ones: one group, 12 pages a block
    cpu = kv_cache.layout(s, tp=1, stages=[range(12)], kv_dtype_bytes=2, state_dtype_bytes=2,
                          platform=kv_cache.CPU)
    assert [(k, len(v)) for k, v in cpu.groups] == [("full", 12)]


def test_pipeline_stages_take_the_minimum_block_count():
    s = shape(num_layers=5)  # stages of 3 and 2 layers (vLLM puts the remainder first here)
    stages = pipeline_stages(5, 2)
    cache = kv_cache.layout(s, tp=1, stages=stages, kv_dtype_bytes=2, state_dtype_bytes=2,
                            platform=kv_cache.GPU)
    page = 16 * 2 * 64 * 2 * 2
    assert cache.bytes_per_block == (3 * page, 2 * page)
    cap = kv_cache.capacity(cache, [30 * page, 30 * page], 160, sliding_window=None,
                            in_flight_tokens=0, mamba_blocks=2)
    assert cap.num_blocks == 10  # the 3-layer stage limits both


# ----------------------------------------------------------------------------------------------
# Cross-checks against vLLM 0.32's own KV-cache code


@pytest.fixture(scope="module")
def vllm_kv():
    pytest.importorskip("vllm")
    import torch
    from vllm.distributed.utils import get_pp_indices
    from vllm.model_executor.layers.mamba.mamba_utils import MambaStateShapeCalculator
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec, SlidingWindowSpec

    return SimpleNamespace(torch=torch, get_pp_indices=get_pp_indices, utils=kv_cache_utils,
                           Full=FullAttentionSpec, Sliding=SlidingWindowSpec, Mamba=MambaSpec,
                           mamba_shape=MambaStateShapeCalculator.mamba2_state_shape)


def vllm_specs(v, s: ArchitectureShape, cache: kv_cache.KvCacheLayout, tp: int):
    kv_heads = max(1, s.num_kv_heads // tp)
    dtype = v.torch.bfloat16
    specs = {}
    for i, kind in enumerate(s.layer_kinds()):
        if kind == "full":
            specs[f"l{i}"] = v.Full(block_size=cache.block_size, num_kv_heads=kv_heads,
                                    head_size=s.head_dim, dtype=dtype)
        elif kind == "sliding":
            specs[f"l{i}"] = v.Sliding(block_size=cache.block_size, num_kv_heads=kv_heads,
                                       head_size=s.head_dim, dtype=dtype,
                                       sliding_window=s.sliding_window)
        else:
            m = s.mamba
            shapes = v.mamba_shape(tp, m.num_heads * m.head_dim, m.n_groups, m.num_heads, m.head_dim,
                                   m.d_state, m.d_conv)
            specs[f"l{i}"] = v.Mamba(block_size=cache.block_size, shapes=shapes, dtypes=(dtype, dtype),
                                     page_size_padded=cache.page_bytes)
    return specs


@pytest.mark.parametrize("pp", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("layers", [5, 16, 32, 40, 80])
def test_pipeline_stages_match_vllm(vllm_kv, layers, pp):
    expected = [range(*vllm_kv.get_pp_indices(layers, rank, pp)) for rank in range(pp)]
    assert pipeline_stages(layers, pp) == expected


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_mamba_state_matches_vllm(vllm_kv, tp):
    m = PLAMO2_1B.mamba
    conv, ssm = vllm_kv.mamba_shape(tp, m.num_heads * m.head_dim, 0, m.num_heads, m.head_dim,
                                    m.d_state, m.d_conv)
    import math

    assert kv_cache.mamba_state_bytes(PLAMO2_1B, tp, 2) == (math.prod(conv) + math.prod(ssm)) * 2


@pytest.mark.parametrize(
    "s, tp",
    [
        (PLAMO2_1B, 1),
        (PLAMO2_1B, 4),
        (shape(num_layers=12, layer_pattern=("sliding",) * 5 + ("full",), sliding_window=1024), 1),
        (shape(num_layers=26, layer_pattern=("sliding", "full"), sliding_window=4096), 2),
        (shape(num_layers=62, layer_pattern=("sliding",) * 5 + ("full",), sliding_window=512), 1),
        (ArchitectureShape(hf_architecture="X", num_layers=9, hidden_size=256, num_attention_heads=4,
                           num_kv_heads=4, head_dim=64, intermediate_size=512, vocab_size=100,
                           tie_word_embeddings=True, layer_pattern=("mamba", "mamba", "full"),
                           mamba=MambaShape(num_heads=8, head_dim=64, d_state=16, d_conv=4)), 1),
    ],
)
def test_groups_pages_and_request_blocks_match_vllm(vllm_kv, s, tp):
    cache = kv_cache.layout(s, tp=tp, stages=[range(s.num_layers)], kv_dtype_bytes=2,
                            state_dtype_bytes=2, platform=kv_cache.GPU)
    specs = vllm_specs(vllm_kv, s, cache, tp)
    assert {spec.page_size_bytes for spec in specs.values()} == {cache.page_bytes}
    groups = vllm_kv.utils._get_kv_cache_groups_uniform_page_size(specs)
    theirs = sorted(tuple(int(n[1:]) for n in g.layer_names) for g in groups)
    assert theirs == sorted(layers for _, layers in cache.groups)
    bytes_per_block = max(len(g.layer_names) * cache.page_bytes for g in groups)
    assert cache.bytes_per_block == (bytes_per_block,)
    # blocks one max-length request needs, per vLLM's own specs
    max_len, in_flight = 20000, 4096
    config = SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_len),
                             parallel_config=SimpleNamespace(decode_context_parallel_size=1),
                             cache_config=SimpleNamespace(mamba_cache_mode="align"),
                             max_in_flight_tokens=in_flight)
    expected = 0
    for g in groups:
        spec = specs[g.layer_names[0]]
        expected += kv_cache.cdiv(spec.max_memory_usage_bytes(config), spec.page_size_bytes)
    assert cache.blocks_per_request(max_len, sliding_window=s.sliding_window, in_flight_tokens=in_flight,
                                    mamba_blocks=kv_cache.GPU.mamba_blocks_per_request) == expected
