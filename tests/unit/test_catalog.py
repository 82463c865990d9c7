"""Model and GPU catalogs: complete, sourced, honest about unknowns."""

from __future__ import annotations

import pytest

from cluster.catalog.cards import (
    UNKNOWN,
    CatalogError,
    ModelCatalog,
    UnknownValueError,
    gpu_catalog,
    model_catalog,
)
from cluster.sizing.hf_config import estimate_params

SELECTED = {"tsuzumi-2", "cc-gov-llm", "llama-3.1-elyza-jp-70b", "sarashina2-mini", "cotomi-v3",
            "takane-32b", "plamo-2.0-prime"}
GPU_IDS = ["a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb", "l4-24gb", "l40s-48gb"]


def test_the_seven_selected_models_and_their_stand_ins():
    catalog = model_catalog()
    assert {m.id for m in catalog.models if m.selected} == SELECTED
    stand_ins = {s for m in catalog.models for s in m.stand_ins}
    assert {"llama-3.1-70b", "llama-3-elyza-jp-8b", "cohere-command-r-08-2024", "plamo-2-8b",
            "sarashina2.2-3b"} <= stand_ins
    assert all(not catalog.get(s).selected for s in stand_ins)


def test_every_number_names_a_known_source():
    catalog = model_catalog()
    for model in catalog.models:
        for key in model.source_keys():
            assert key in catalog.sources, (model.id, key)
    gpus = gpu_catalog()
    for gpu in gpus.gpus:
        assert gpu.sources and all(k in gpus.sources for k in gpu.sources)


def test_a_dangling_source_is_rejected():
    data = model_catalog().model_dump()
    data["models"][0]["params_source"] = "made-up"
    with pytest.raises(ValueError, match="unknown source"):
        ModelCatalog.model_validate(data)


@pytest.mark.parametrize("model_id", ["tsuzumi-2", "cc-gov-llm", "sarashina2-mini", "cotomi-v3",
                                      "takane-32b", "plamo-2.0-prime"])
def test_unpublished_shapes_stay_unknown(model_id):
    card = model_catalog().get(model_id)
    assert card.architecture.unknown_fields(), "a vendor who published nothing got a shape"
    with pytest.raises(UnknownValueError) as exc:
        card.architecture.resolve()
    assert "num_layers" in exc.value.fields


def test_unpublished_sizes_stay_unknown():
    catalog = model_catalog()
    for model_id in ("cc-gov-llm", "sarashina2-mini", "cotomi-v3", "plamo-2-8b"):
        assert catalog.get(model_id).params_billion == UNKNOWN
    assert catalog.get("tsuzumi-2").params_billion == 30  # "30B" is the vendor's own figure


def test_operator_values_complete_an_unknown_shape():
    card = model_catalog().get("tsuzumi-2")
    supplied = dict(hf_architecture="LlamaForCausalLM", num_layers=2, hidden_size=128,
                    num_attention_heads=2, num_kv_heads=1, head_dim=64, intermediate_size=256,
                    vocab_size=500, tie_word_embeddings=False, dtype="bfloat16",
                    layer_pattern=("full",), sliding_window=None, mamba=None)
    assert card.architecture.resolve(supplied).num_layers == 2
    partial = {k: v for k, v in supplied.items() if k != "vocab_size"}
    with pytest.raises(UnknownValueError) as exc:
        card.architecture.resolve(partial)
    assert exc.value.fields == ["vocab_size"]


def test_published_shapes_reproduce_published_parameter_counts():
    """The catalog's shapes and parameter counts are consistent (each was copied separately)."""
    checked = 0
    for model in model_catalog().models:
        if model.architecture.unknown_fields() or model.params_billion == UNKNOWN:
            continue
        estimate = estimate_params(model.architecture.resolve()) / 1e9
        assert estimate == pytest.approx(model.params_billion, rel=0.005), model.id
        checked += 1
    assert checked >= 8


def test_gpu_classes():
    gpus = gpu_catalog()
    assert [g.id for g in gpus.gpus] == GPU_IDS
    h100, a100 = gpus.get("h100-80gb"), gpus.get("a100-40gb")
    assert h100.fp8_native and not a100.fp8_native
    assert a100.reported_memory_gib == 39.49 and h100.bandwidth_gbs == 3350
    for gpu in gpus.gpus:
        # what vLLM budgets against is a little less than the nominal capacity
        assert 0.9 * gpu.memory_gb < gpu.reported_memory_gib < gpu.memory_gb
        assert gpu.max_gpus_per_node in (1, 4, 8)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(CatalogError, match="h100-80gb"):
        gpu_catalog().get("h100")
    with pytest.raises(CatalogError, match="tsuzumi-2"):
        model_catalog().get("tsuzumi")
