"""Shapes from Hugging Face config.json files and parameter counts from checkpoints."""

from __future__ import annotations

import json

import pytest

from cluster.catalog.cards import model_catalog
from cluster.sizing.hf_config import (
    HfConfigError,
    checkpoint_params,
    context_length,
    estimate_params,
    load_config,
    shape_from_config,
)

# Published config.json contents (trimmed to the fields that matter), see catalog sources.
LLAMA_31_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
    "intermediate_size": 28672, "max_position_embeddings": 131072, "num_attention_heads": 64,
    "num_hidden_layers": 80, "num_key_value_heads": 8, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 128256,
}
COMMAND_R_08_2024 = {
    "architectures": ["CohereForCausalLM"], "model_type": "cohere", "hidden_size": 8192,
    "intermediate_size": 24576, "max_position_embeddings": 131072, "num_attention_heads": 64,
    "num_hidden_layers": 40, "num_key_value_heads": 8, "torch_dtype": "bfloat16", "vocab_size": 256000,
}
PLAMO_2_1B = {
    "architectures": ["PlamoForCausalLM"], "model_type": "plamo2", "hidden_size": 2048,
    "hidden_size_per_head": 128, "intermediate_size": 8192, "mamba_d_conv": 4, "mamba_d_state": 64,
    "mamba_enabled": True, "mamba_num_heads": 32, "mamba_step": 2, "max_position_embeddings": 10485760,
    "num_attention_heads": 16, "num_hidden_layers": 16, "num_key_value_heads": 1, "sliding_window": 2048,
    "torch_dtype": "float32", "vocab_size": 100000,
}


def test_llama_matches_the_catalog():
    shape = shape_from_config(LLAMA_31_70B)
    catalog = model_catalog().get("llama-3.1-70b").architecture.resolve()
    assert shape == catalog
    assert context_length(LLAMA_31_70B) == 131072
    assert estimate_params(shape) == 70_553_706_496  # the published safetensors count


def test_cohere_ties_embeddings_by_default():
    shape = shape_from_config(COMMAND_R_08_2024)
    assert shape.tie_word_embeddings and shape.head_dim == 128
    assert shape == model_catalog().get("cohere-command-r-08-2024").architecture.resolve()


def test_plamo2_hybrid_layers():
    shape = shape_from_config(PLAMO_2_1B)
    assert shape.layer_pattern == ("mamba", "full")  # layer i is Mamba unless i % 2 == 1
    assert shape.count("mamba") == 8 and shape.count("full") == 8
    assert shape.mamba.num_heads == 32 and shape.mamba.head_dim == 128 and shape.mamba.d_state == 64
    assert shape.sliding_window is None  # vLLM's plamo2 never applied the config's window
    assert shape.num_kv_heads == 1 and shape.dtype == "float32"
    assert estimate_params(shape) / 1e9 == pytest.approx(1.29, rel=0.005)  # 5.17 GB of float32


@pytest.mark.parametrize(
    "config, kinds",
    [
        ({"model_type": "gemma2", "sliding_window": 4096}, ("sliding", "full")),
        ({"model_type": "gemma3_text", "sliding_window": 1024, "sliding_window_pattern": 6},
         ("sliding",) * 5 + ("full",)),
        ({"model_type": "mistral", "sliding_window": 4096}, ("sliding",)),
        ({"model_type": "mistral", "sliding_window": None}, ("full",)),
        ({"model_type": "qwen2", "sliding_window": 32768, "use_sliding_window": False}, ("full",)),
        ({"model_type": "plamo3", "sliding_window": 2048,
          "layer_types": ["sliding_attention"] * 7 + ["full_attention"]} , ("sliding",) * 7 + ("full",)),
    ],
)
def test_sliding_window_patterns(config, kinds):
    base = {"hidden_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "num_hidden_layers": 24, "intermediate_size": 4096, "vocab_size": 1000}
    shape = shape_from_config({**base, **config})
    assert shape.layer_pattern == kinds
    assert shape.head_dim == 256


def test_multimodal_text_config_is_used():
    config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
              "text_config": {"hidden_size": 2560, "num_attention_heads": 8, "num_key_value_heads": 4,
                              "head_dim": 256, "num_hidden_layers": 34, "intermediate_size": 10240,
                              "vocab_size": 262208, "sliding_window": 1024,
                              "sliding_window_pattern": 6}}
    shape = shape_from_config(config)
    assert shape.num_layers == 34 and shape.count("full") == 5


def test_missing_and_inconsistent_fields_are_named(tmp_path):
    with pytest.raises(HfConfigError, match="num_hidden_layers"):
        shape_from_config({"hidden_size": 8})
    bad = {**LLAMA_31_70B, "num_key_value_heads": 7}
    with pytest.raises(HfConfigError, match="multiple of num_kv_heads"):
        shape_from_config(bad)
    with pytest.raises(HfConfigError, match="cannot read"):
        load_config(tmp_path / "nope.json")


def test_checkpoint_parameters_from_safetensors_headers(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "model-1.safetensors"))
    save_file({"c": torch.zeros(2, 2, 2, dtype=torch.bfloat16)}, str(tmp_path / "model-2.safetensors"))
    count, how = checkpoint_params(tmp_path)
    assert count == 12 + 5 + 8 and "2 safetensors" in how


def test_checkpoint_parameters_from_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 400}}))
    assert checkpoint_params(tmp_path, dtype="bfloat16")[0] == 200
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 400, "total_parameters": 123}}))
    assert checkpoint_params(tmp_path)[0] == 123
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(HfConfigError, match="--params"):
        checkpoint_params(tmp_path)
