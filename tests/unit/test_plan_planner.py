"""The planner against hand calculations: weights, degrees, refusals, alternatives, replicas."""

from __future__ import annotations

import math

import pytest

from cluster.catalog.cards import gpu_catalog, model_catalog
from cluster.sizing import memory
from cluster.sizing.planner import (
    VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    SizingRequest,
    plan,
    valid_tensor_parallel_sizes,
)
from cluster.sizing.throughput import ReplicaThroughput, autoscaling_target, replica_bounds

GIB = 2**30


def request(model_id: str, gpu_id: str, **kw) -> SizingRequest:
    card = model_catalog().get(model_id)
    return SizingRequest(
        model=model_id, shape=card.architecture.resolve(), params=round(card.params_billion * 1e9),
        gpu=gpu_catalog().get(gpu_id), max_model_len=kw.pop("max_model_len", 8192),
        allowed_quantizations=card.quantizations, context_length=card.context_length, **kw,
    )


def test_default_utilization_is_the_pinned_vllm_default():
    from vllm.config.cache import CacheConfig

    assert CacheConfig().gpu_memory_utilization == VLLM_DEFAULT_GPU_MEMORY_UTILIZATION == 0.92


@pytest.mark.parametrize(
    "quant, expected",
    [
        # 70.55B params of which 2 x 128256 x 8192 = 2.101B embedding/lm_head stay bf16
        ("bf16", 70.55e9 * 2),
        ("fp8", (70.55e9 - 2_101_346_304) * 1 + 2_101_346_304 * 2),
        ("awq", (70.55e9 - 2_101_346_304) * (0.5 + 2.5 / 128) + 2_101_346_304 * 2),
    ],
)
def test_weight_bytes_by_hand(quant, expected):
    shape = model_catalog().get("llama-3.1-70b").architecture.resolve()
    assert memory.weight_bytes(70_550_000_000, shape, quant, 2) == pytest.approx(expected, abs=2)


def test_vendor_rule_of_thumb_for_8bit_30b():
    # "8-bit: 30B -> ~30 GB": holds within the embedding tables' share for a 30B-class shape
    shape = model_catalog().get("cohere-command-r-08-2024").architecture.resolve()
    weights = memory.weight_bytes(32_300_000_000, shape, "fp8", 2)
    assert 32.3e9 < weights < 32.3e9 * 1.08  # the 2.1B-parameter vocabulary stays in bf16


def test_per_gpu_weights_split_and_replicate():
    shape = model_catalog().get("llama-3.1-70b").architecture.resolve()
    params = 70_550_000_000
    (tp4,) = memory.stage_weights(params, shape, "bf16", 2, 4, [range(80)])
    assert tp4.bytes_per_gpu == pytest.approx(params * 2 / 4, rel=1e-6)
    (tp16,) = memory.stage_weights(params, shape, "bf16", 2, 16, [range(80)])
    # 8 KV heads on 16 ranks: each rank holds a whole KV head's K/V projections (twice its share)
    extra = 80 * 8192 * 128 * 2 * 2 * (1 - 0.5)
    assert tp16.bytes_per_gpu == pytest.approx(params * 2 / 16 + extra, rel=1e-6)
    first, last = memory.stage_weights(params, shape, "bf16", 2, 8, memory.pipeline_stages(80, 2))
    assert first.bytes_per_gpu == last.bytes_per_gpu  # embedding on the first, lm_head on the last


def test_valid_tensor_parallel_sizes():
    catalog = model_catalog()
    llama = catalog.get("llama-3.1-70b").architecture.resolve()
    assert valid_tensor_parallel_sizes(llama, "bf16", 16) == [1, 2, 4, 8, 16]
    sarashina = catalog.get("sarashina2-13b").architecture.resolve()  # 40 heads, MLP 13824 = 2^9 x 27
    assert valid_tensor_parallel_sizes(sarashina, "bf16", 10) == [1, 2, 4, 8]
    small = catalog.get("sarashina2.2-3b").architecture.resolve()  # MLP 8960: 2240 per rank at TP 4
    assert valid_tensor_parallel_sizes(small, "bf16", 8) == [1, 2, 4, 8]
    assert valid_tensor_parallel_sizes(small, "awq", 8) == [1, 2]  # 2240 % 128 != 0


def test_70b_bf16_on_h100_needs_four_gpus():
    result = plan(request("llama-3.1-elyza-jp-70b", "h100-80gb", max_model_len=32768))
    assert result.fits and result.tensor_parallel_size == 4 and result.pipeline_parallel_size == 1
    # hand check of the KV capacity: per-rank budget minus weights minus overhead, in 16-token
    # blocks of 80 layers x 2 KV heads x 128 x 2 x 2 bytes
    budget = math.ceil(79.22 * GIB * 0.92)
    available = budget - result.weight_bytes_per_gpu - result.overhead_bytes_per_gpu
    blocks = available // (16 * 80 * 2 * 128 * 2 * 2)
    assert result.num_blocks == blocks and result.kv_cache_tokens == blocks * 16
    two = plan(request("llama-3.1-elyza-jp-70b", "h100-80gb", max_model_len=32768,
                       tensor_parallel_size=2))
    assert not two.fits and "cannot hold one sequence" in two.reasons[0]


def test_refusal_explains_and_offers_alternatives_ranked_by_gpus():
    result = plan(request("llama-3.1-70b", "a100-80gb", tensor_parallel_size=1))
    assert not result.fits
    assert "bf16 weights total 131.4 GiB" in result.reasons[0] and "a100-80gb" in result.reasons[0]
    gpus = [alt["gpus_per_replica"] for alt in result.alternatives]
    assert gpus == sorted(gpus) and len(result.alternatives) >= 3
    for alt in result.alternatives:  # every alternative really fits
        again = plan(request("llama-3.1-70b", alt["gpu"], quantization=alt["quantization"],
                             kv_cache_dtype=alt["kv_cache_dtype"],
                             tensor_parallel_size=alt["tensor_parallel_size"]), alternatives=False)
        if alt["pipeline_parallel_size"] == 1:
            assert again.fits, alt


def test_replica_spans_nodes_with_pipeline_stages():
    result = plan(request("llama-3.1-70b", "l4-24gb", max_model_len=32768, gpus_per_node=4),
                  alternatives=False)
    assert result.fits and result.tensor_parallel_size == 4 and result.pipeline_parallel_size == 2
    assert result.nodes_per_replica == 2 and any("spans 2 nodes" in n for n in result.notes)


def test_concurrency_must_fit_at_max_model_len():
    fits = plan(request("llama-3.1-8b", "h100-80gb", concurrency=8), alternatives=False)
    assert fits.fits and fits.max_num_seqs == 8 and fits.max_concurrency >= 8
    too_many = plan(request("llama-3.1-8b", "l4-24gb", concurrency=64, tensor_parallel_size=1),
                    alternatives=False)
    assert not too_many.fits and "fewer than the 64 requested" in too_many.reasons[-1]


def test_non_memory_refusals():
    plamo = model_catalog().get("plamo-2-1b")
    req = SizingRequest(model="plamo-2-1b", shape=plamo.architecture.resolve(), params=1_290_000_000,
                        gpu=gpu_catalog().get("l4-24gb"), max_model_len=8192)
    result = plan(req, alternatives=False)
    assert result.tensor_parallel_size == 1  # memory fits on one GPU ...
    assert not result.fits and "0.26.0" in result.reasons[0]  # ... but vLLM 0.32 cannot serve it
    disallowed = plan(request("sarashina2-13b", "h100-80gb", quantization="awq"), alternatives=False)
    assert not disallowed.fits and "not offered" in disallowed.reasons[0]
    too_long = plan(request("sarashina2-13b", "h100-80gb", max_model_len=8192), alternatives=False)
    assert not too_long.fits and "context length 4096" in too_long.reasons[0]


def test_fp8_on_ampere_is_allowed_with_a_note():
    result = plan(request("cohere-command-r-08-2024", "a100-40gb", quantization="fp8"),
                  alternatives=False)
    assert result.fits and result.tensor_parallel_size == 1  # "30B class on one A100 40GB in 8 bits"
    assert any("weight-only" in n for n in result.notes)
    assert result.engine_kwargs()["quantization"] == "fp8"


def test_max_num_seqs_is_what_the_cache_holds_at_the_typical_length():
    result = plan(request("llama-3.1-8b", "a100-40gb", typical_sequence_tokens=2000), alternatives=False)
    assert result.max_num_seqs <= result.kv_cache_tokens // 2000 and result.max_num_seqs <= 256
    assert result.target_ongoing_requests == autoscaling_target(result.max_num_seqs)
    assert result.target_ongoing_requests == math.floor(0.8 * result.max_num_seqs)


def test_replica_bounds_by_hand():
    throughput = ReplicaThroughput(batch=32, decode_tokens_per_s=1000.0, prefill_tokens_per_s=10000.0,
                                   source="measured")
    per_replica = throughput.requests_per_s(1000, 500)  # 0.1 s prefill + 0.5 s decode -> 1/0.6 req/s
    assert per_replica == pytest.approx(1 / 0.6)
    bounds = replica_bounds(peak_requests_per_s=10.0, baseline_fraction=0.1,
                            requests_per_s_per_replica=per_replica, floor=1)
    assert (bounds.min_replicas, bounds.max_replicas) == (1, 6)  # ceil(10 * 0.6) = 6
    floored = replica_bounds(peak_requests_per_s=0.01, baseline_fraction=0.0,
                             requests_per_s_per_replica=per_replica, floor=2)
    assert (floored.min_replicas, floored.max_replicas) == (2, 2)


def test_measured_decode_rate_replaces_the_roofline():
    base = request("llama-3.1-8b", "h100-80gb")
    estimated = plan(base, alternatives=False)
    from dataclasses import replace

    measured = plan(replace(base, measured_decode_tokens_per_s=1234.0), alternatives=False)
    assert estimated.throughput.source == "roofline" and measured.throughput.source == "measured"
    assert measured.throughput.decode_tokens_per_s == 1234.0


def test_json_has_the_documented_keys():
    data = plan(request("llama-3.1-8b", "l4-24gb")).to_json()
    for key in ("model", "gpu", "quantization", "tensor_parallel_size", "pipeline_parallel_size",
                "gpus_per_replica", "weight_bytes", "kv_cache_bytes_per_token", "kv_cache_tokens",
                "max_concurrent_sequences", "fits", "reasons", "alternatives"):
        assert key in data
    assert data["kv_cache_bytes_per_token"] == 32 * 8 * 128 * 2 * 2
