"""Property tests: whatever the model and GPU, the plan is valid and behaves monotonically."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cluster.catalog.cards import KV_CACHE_DTYPES, ArchitectureShape, MambaShape, gpu_catalog
from cluster.sizing.hf_config import estimate_params
from cluster.sizing.planner import (
    SizingRequest,
    default_batch_limits,
    plan,
    valid_tensor_parallel_sizes,
)

GPUS = gpu_catalog().gpus
PATTERNS = [("full",), ("sliding", "full"), ("sliding",) * 5 + ("full",), ("mamba", "full")]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def shapes(draw) -> ArchitectureShape:
    kv = draw(st.sampled_from([1, 2, 4, 8, 16]))
    heads = kv * draw(st.sampled_from([1, 2, 4, 8]))
    head_dim = draw(st.sampled_from([64, 80, 128, 160, 256]))
    pattern = draw(st.sampled_from(PATTERNS))
    mamba = None
    if "mamba" in pattern:
        mamba = MambaShape(num_heads=draw(st.sampled_from([8, 16, 32, 64])),
                           head_dim=draw(st.sampled_from([64, 128])),
                           d_state=draw(st.sampled_from([16, 64, 128])), d_conv=4)
    return ArchitectureShape(
        hf_architecture="PropertyTestForCausalLM",
        num_layers=draw(st.integers(2, 96)),
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=128 * draw(st.integers(4, 256)),
        vocab_size=draw(st.integers(1000, 260_000)),
        tie_word_embeddings=draw(st.booleans()),
        layer_pattern=pattern,
        sliding_window=draw(st.sampled_from([512, 4096])) if "sliding" in pattern else None,
        mamba=mamba,
    )


@st.composite
def requests(draw) -> SizingRequest:
    shape = draw(shapes())
    return SizingRequest(
        model="property-test",
        shape=shape,
        params=estimate_params(shape),
        gpu=draw(st.sampled_from(GPUS)),
        max_model_len=draw(st.integers(256, 131072)),
        quantization=draw(st.sampled_from(["bf16", "fp8", "int8", "awq"])),
        kv_cache_dtype=draw(st.sampled_from(KV_CACHE_DTYPES)),
        gpu_memory_utilization=draw(st.floats(0.5, 0.95)),
        typical_sequence_tokens=draw(st.none() | st.integers(64, 8192)),
        concurrency=draw(st.none() | st.integers(1, 256)),
        gpus_per_node=draw(st.sampled_from([1, 2, 4, 8])),
    )


def with_memory(req: SizingRequest, factor: float) -> SizingRequest:
    gpu = req.gpu.model_copy(update={"reported_memory_gib": req.gpu.reported_memory_gib * factor})
    return replace(req, gpu=gpu)


@SETTINGS
@given(requests())
def test_degrees_are_valid_for_vllm(req):
    result = plan(req, alternatives=False)
    tp, pp = result.tensor_parallel_size, result.pipeline_parallel_size
    shape = req.shape
    assert shape.num_attention_heads % tp == 0
    kv = shape.num_kv_heads
    assert (kv % tp == 0) if kv >= tp else (tp % kv == 0)
    assert result.gpus_per_replica == tp * pp
    if tp not in valid_tensor_parallel_sizes(shape, req.quantization, req.node_gpus):
        # no valid degree at all (e.g. AWQ on layers narrower than a 128-wide group): refused
        assert not result.fits and any("is invalid" in r for r in result.reasons)
        return
    if pp > 1:  # stages only when a full node is not enough
        assert tp == valid_tensor_parallel_sizes(shape, req.quantization, req.node_gpus)[-1]
        assert pp <= shape.num_layers


@SETTINGS
@given(requests())
def test_a_plan_that_fits_never_exceeds_gpu_memory(req):
    result = plan(req, alternatives=False)
    assume(result.fits)
    assert result.budget_bytes_per_gpu <= req.gpu.memory_bytes
    for used in result.used_bytes_per_stage:
        assert used <= result.budget_bytes_per_gpu
    assert result.max_concurrency >= 1 and result.kv_cache_tokens >= req.max_model_len
    assert 1 <= result.target_ongoing_requests <= result.max_num_seqs


@SETTINGS
@given(requests(), st.floats(1.0, 3.0))
def test_more_memory_never_needs_more_gpus(req, factor):
    small = plan(req, alternatives=False)
    assume(small.fits)
    large = plan(with_memory(req, factor), alternatives=False)
    assert large.fits and large.gpus_per_replica <= small.gpus_per_replica
    higher_utilization = replace(req, gpu_memory_utilization=min(0.99, req.gpu_memory_utilization + 0.04))
    assert plan(higher_utilization, alternatives=False).gpus_per_replica <= small.gpus_per_replica


@SETTINGS
@given(requests(), st.floats(1.0, 3.0))
def test_kv_capacity_grows_with_memory_at_fixed_degrees(req, factor):
    first = plan(req, alternatives=False)
    assume(first.memory_fits)
    fixed = replace(req, tensor_parallel_size=first.tensor_parallel_size, concurrency=1,
                    gpus_per_node=first.tensor_parallel_size)
    assume(first.pipeline_parallel_size == 1)
    bigger = with_memory(fixed, factor)
    # vLLM picks larger batch defaults on GPUs of >= 70 GiB; more tokens in flight then hold
    # more sliding-window blocks per request, so capacity only grows at equal batch limits.
    assume(default_batch_limits(fixed.gpu) == default_batch_limits(bigger.gpu))
    small, large = plan(fixed, alternatives=False), plan(bigger, alternatives=False)
    assert large.kv_cache_tokens >= small.kv_cache_tokens
    assert large.num_blocks >= small.num_blocks


@SETTINGS
@given(requests())
def test_fp8_kv_and_weights_never_hold_less(req):
    base = replace(req, quantization="bf16", kv_cache_dtype="auto")
    lean = replace(req, quantization="fp8", kv_cache_dtype="fp8")
    a, b = plan(base, alternatives=False), plan(lean, alternatives=False)
    if a.fits:
        assert b.fits and b.gpus_per_replica <= a.gpus_per_replica
    at = replace(base, tensor_parallel_size=1, concurrency=1)
    assert (plan(replace(at, kv_cache_dtype="fp8"), alternatives=False).num_blocks
            >= plan(at, alternatives=False).num_blocks)


@SETTINGS
@given(requests(), st.integers(1, 8))
def test_longer_context_never_holds_more_sequences(req, factor):
    short = replace(req, tensor_parallel_size=1, concurrency=1)
    long = replace(short, max_model_len=short.max_model_len * factor)
    assert (plan(long, alternatives=False).max_concurrency
            <= plan(short, alternatives=False).max_concurrency + 1e-9)
