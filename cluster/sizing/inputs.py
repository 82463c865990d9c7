"""Turn what an operator names (catalog id, config.json, checkpoint) into planner inputs.

Shared by `govllm plan` and the cluster-spec path so both resolve unknown
catalog values, parameter counts and context lengths the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.catalog.cards import (
    UNKNOWN,
    ArchitectureShape,
    CatalogArchitecture,
    ModelCard,
    UnknownValueError,
)
from cluster.sizing.hf_config import (
    HfConfigError,
    checkpoint_params,
    context_length,
    estimate_params,
    load_config,
    shape_from_config,
)


class PlanningError(ValueError):
    """Inputs the planner cannot use (unknown values, unreadable config); exit status 1."""


class PlanDoesNotFit(ValueError):
    """A plan was made and does not fit; the message lists why (exit status 2)."""


@dataclass(frozen=True)
class ResolvedModel:
    shape: ArchitectureShape
    params: int
    params_note: str
    context_length: int | None


def resolve_model(*, card: ModelCard | None, hf_config: Path | None = None,
                  supplied: dict[str, Any] | None = None, params_billion: float | None = None,
                  where: str, supply_hint: str) -> ResolvedModel:
    """Shape, parameter count and context length from the catalog and what the operator gave.

    Operator values win over the catalog; a value still `unknown` afterwards is
    an error naming the fields and how to supply them (`supply_hint`).
    """
    values = dict(supplied or {})
    config = None
    if hf_config is not None:
        try:
            config = load_config(hf_config)
            values = {**shape_from_config(config).model_dump(), **values}
        except HfConfigError as exc:
            raise PlanningError(f"{where}: {exc}") from None
    architecture = card.architecture if card else CatalogArchitecture(source="operator")
    try:
        shape = architecture.resolve(values)
    except UnknownValueError as exc:
        name = card.name if card else "the model"
        raise PlanningError(
            f"{where}: {name} has unknown {exc} (not published); {supply_hint}"
        ) from None
    except ValueError as exc:
        raise PlanningError(f"{where}: inconsistent architecture: {exc}") from None
    params, note = _params(card, hf_config, params_billion, shape, where)
    context = context_length(config) if config else None
    if context is None and card is not None and card.context_length != UNKNOWN:
        context = card.context_length
    return ResolvedModel(shape=shape, params=params, params_note=note, context_length=context)


def _params(card: ModelCard | None, hf_config: Path | None, params_billion: float | None,
            shape: ArchitectureShape, where: str) -> tuple[int, str]:
    if params_billion:
        return round(params_billion * 1e9), "given"
    if hf_config is not None and hf_config.is_dir():
        try:
            return checkpoint_params(hf_config, dtype=shape.dtype)
        except HfConfigError:
            pass
    if card is not None and card.params_billion != UNKNOWN:
        return round(card.params_billion * 1e9), f"catalog ({card.params_source})"
    if hf_config is not None:
        return estimate_params(shape), "estimated from config.json (dense/PLaMo 2 formula)"
    raise PlanningError(f"{where}: the parameter count is unknown; give it in billions")


def request_for(*, gpu_id: str, model_id: str | None = None, hf_config: Path | None = None,
                params_billion: float | None = None, quantization: str = "bf16",
                kv_cache_dtype: str = "auto", max_model_len: int | None = None,
                concurrency: int | None = None, gpu_memory_utilization: float | None = None,
                tensor_parallel_size: int | None = None, gpus_per_node: int | None = None):
    """A SizingRequest from `govllm plan` flags. Raises CatalogError or PlanningError."""
    from cluster.catalog.cards import KV_CACHE_DTYPES, QUANTIZATIONS, gpu_catalog, model_catalog
    from cluster.sizing.planner import SizingRequest

    if quantization not in QUANTIZATIONS:
        raise PlanningError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise PlanningError(f"unknown KV-cache dtype {kv_cache_dtype!r}; choose one of {', '.join(KV_CACHE_DTYPES)}")
    if model_id is None and hf_config is None:
        raise PlanningError("name a model: --model ID (catalog), --hf-config FILE, or --spec FILE")
    gpu = gpu_catalog().get(gpu_id)
    card = model_catalog().get(model_id) if model_id else None
    resolved = resolve_model(
        card=card, hf_config=hf_config, params_billion=params_billion,
        where=model_id or str(hf_config),
        supply_hint="pass the delivered checkpoint's config.json with --hf-config",
    )
    length = max_model_len or resolved.context_length
    if not length:
        raise PlanningError("the model's context length is unknown; pass --max-model-len")
    return SizingRequest(
        model=model_id or resolved.shape.hf_architecture,
        shape=resolved.shape,
        params=resolved.params,
        gpu=gpu,
        max_model_len=length,
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
        concurrency=concurrency,
        gpu_memory_utilization=gpu_memory_utilization or SizingRequest.gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        gpus_per_node=gpus_per_node,
        allowed_quantizations=card.quantizations if card else QUANTIZATIONS,
        context_length=resolved.context_length,
    )
