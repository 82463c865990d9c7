"""Architecture shape and parameter count from a Hugging Face checkpoint.

A vendor delivers weights with a `config.json`; this module reads the fields
the planner needs from it (Llama, Mistral, Qwen2/3, Cohere/Cohere2, Gemma 1-3,
PLaMo 2 hybrid and PLaMo 3 at least), so the delivery can be sized before it
is added to the catalog. The parameter count comes from the safetensors files
when they are present (tensor headers only; no weights are read).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from cluster.catalog.cards import ArchitectureShape, LayerKind, MambaShape

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "half": "float16"}

#: transformers' per-family default of tie_word_embeddings (PretrainedConfig's is True).
_TIED_BY_DEFAULT = {"llama": False, "mistral": False, "qwen2": False, "qwen3": False, "granite": False}

#: Layer types named in `layer_types` (transformers >= 4.53) -> planner layer kinds.
_LAYER_TYPES: dict[str, LayerKind] = {
    "full_attention": "full",
    "sliding_attention": "sliding",
    "mamba": "mamba",
}


class HfConfigError(ValueError):
    """A config.json or checkpoint the planner cannot read; the message says what is missing."""


def load_config(path: str | Path) -> dict[str, Any]:
    """config.json from a file or a checkpoint directory."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HfConfigError(f"{file}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise HfConfigError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HfConfigError(f"{file}: expected a JSON object")
    return data


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs (Gemma 3 and others) nest the language model under text_config."""
    text = cfg.get("text_config")
    if isinstance(text, dict):
        merged = {k: v for k, v in cfg.items() if k != "text_config"}
        merged.update(text)
        return merged
    return cfg


def _required(cfg: dict[str, Any], *names: str) -> int:
    for name in names:
        if isinstance(cfg.get(name), int):
            return cfg[name]
    raise HfConfigError(f"config.json has none of {', '.join(names)}")


def _periodic(kinds: list[LayerKind]) -> tuple[LayerKind, ...]:
    """The shortest unit that repeats to `kinds` (the whole list if none does)."""
    n = len(kinds)
    for size in range(1, n + 1):
        if n % size == 0 and kinds == kinds[:size] * (n // size):
            return tuple(kinds[:size])
    return tuple(kinds)


def _layer_kinds(cfg: dict[str, Any], model_type: str, num_layers: int) -> list[LayerKind]:
    if model_type == "plamo2" and cfg.get("mamba_enabled", True):
        step = cfg.get("mamba_step", 2)
        # vLLM's plamo2.is_mamba: layer i is Mamba unless i % step == step // 2.
        return ["mamba" if i % step != step // 2 else "full" for i in range(num_layers)]
    if isinstance(cfg.get("layer_types"), list):
        unknown = sorted({t for t in cfg["layer_types"] if t not in _LAYER_TYPES})
        if unknown:
            raise HfConfigError(f"config.json layer_types has unsupported types {unknown}")
        return [_LAYER_TYPES[t] for t in cfg["layer_types"]][:num_layers]
    window = cfg.get("sliding_window")
    if not window:
        return ["full"] * num_layers
    if model_type == "gemma2":
        return ["sliding" if i % 2 == 0 else "full" for i in range(num_layers)]
    pattern = cfg.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 1:  # Gemma 3, Cohere2: every Nth layer is global
        return ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(num_layers)]
    if model_type in ("qwen2", "qwen3"):
        if not cfg.get("use_sliding_window", False):
            return ["full"] * num_layers
        first = cfg.get("max_window_layers", num_layers)
        return ["sliding" if i >= first else "full" for i in range(num_layers)]
    return ["sliding"] * num_layers  # Mistral-style: one window on every layer


def shape_from_config(cfg: dict[str, Any]) -> ArchitectureShape:
    """The planner's view of a Hugging Face config.json."""
    cfg = _text_config(cfg)
    model_type = str(cfg.get("model_type", ""))
    archs = cfg.get("architectures") or [model_type or "unknown"]
    num_layers = _required(cfg, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _required(cfg, "hidden_size", "d_model")
    heads = _required(cfg, "num_attention_heads", "n_head")
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg.get("hidden_size_per_head") or hidden // heads
    kinds = _layer_kinds(cfg, model_type, num_layers)
    mamba = None
    if "mamba" in kinds:
        mamba = MambaShape(
            num_heads=_required(cfg, "mamba_num_heads"),
            head_dim=cfg.get("mamba_head_dim") or head_dim,
            d_state=_required(cfg, "mamba_d_state", "ssm_state_size"),
            d_conv=_required(cfg, "mamba_d_conv", "conv_kernel"),
            n_groups=cfg.get("n_groups", 0) if model_type != "plamo2" else 0,
        )
    dtype = _DTYPES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"), "bfloat16")
    try:
        return ArchitectureShape(
            hf_architecture=archs[0],
            num_layers=num_layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=_required(cfg, "intermediate_size", "ffn_hidden_size"),
            vocab_size=_required(cfg, "vocab_size"),
            tie_word_embeddings=cfg.get(
                "tie_word_embeddings", _TIED_BY_DEFAULT.get(model_type, True)
            ),
            dtype=dtype,
            layer_pattern=_periodic(kinds),
            sliding_window=cfg.get("sliding_window") if "sliding" in kinds else None,
            mamba=mamba,
        )
    except ValueError as exc:
        raise HfConfigError(f"config.json describes an inconsistent model: {exc}") from None


def context_length(cfg: dict[str, Any]) -> int | None:
    value = _text_config(cfg).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def estimate_params(shape: ArchitectureShape) -> int:
    """Parameters implied by the shape (dense transformer, gated MLP; PLaMo 2 Mamba mixers).

    Exact for Llama-family checkpoints (70,553,706,496 for Llama-3.1-70B); Cohere
    and Qwen2 differ only by norms and biases (well under 0.01%).
    """
    h, hd = shape.hidden_size, shape.head_dim
    attn = h * shape.num_attention_heads * hd * 2 + h * shape.num_kv_heads * hd * 2
    mlp = 3 * h * shape.intermediate_size
    total = 0
    for kind in shape.layer_kinds():
        if kind == "mamba":
            total += _mamba_mixer_params(shape) + mlp + 2 * h
        else:
            total += attn + mlp + 2 * h
    embeddings = shape.vocab_size * h * (1 if shape.tie_word_embeddings else 2)
    return total + embeddings + h


def _mamba_mixer_params(shape: ArchitectureShape) -> int:
    """PLaMo 2's Mamba2 mixer: in/out projections, conv, B/C/dt projection (vLLM plamo2)."""
    m = shape.mamba
    assert m is not None
    inner = m.num_heads * m.head_dim
    dt_rank = max(64, shape.hidden_size // 16)
    return (
        shape.hidden_size * 2 * inner  # in_proj (x and gate)
        + inner * m.d_conv  # depthwise conv
        + inner * (dt_rank + 2 * m.d_state)  # bcdt_proj
        + dt_rank * m.num_heads  # dt_proj
        + inner * shape.hidden_size  # out_proj
        + 3 * m.num_heads  # A_log, D, dt_bias
    )


def _safetensors_numel(file: Path) -> int:
    with file.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    return sum(
        math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__"
    )


def checkpoint_params(directory: str | Path, *, dtype: str = "bfloat16") -> tuple[int, str]:
    """(parameter count, how it was obtained) for a checkpoint directory."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return sum(_safetensors_numel(f) for f in files), f"counted from {len(files)} safetensors header(s)"
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        meta = json.loads(index.read_text()).get("metadata", {})
        if isinstance(meta.get("total_parameters"), int):
            return meta["total_parameters"], "safetensors index metadata.total_parameters"
        if isinstance(meta.get("total_size"), int):
            per = {"float32": 4}.get(dtype, 2)
            return meta["total_size"] // per, f"safetensors index total_size / {per} bytes"
    raise HfConfigError(
        f"{directory}: no *.safetensors files or model.safetensors.index.json with a size; "
        "pass --params N (billions)"
    )
