"""Cluster-spec sections that drive the sizing planner (engine.device: gpu).

An operator names, per model, the catalog entry, the GPU class and the
quantisation; the spec says the expected load and the GPU pools. Everything
the planner derives (TP/PP, gpu_memory_utilization, max_num_seqs, replica
bounds, autoscaling target) is *not* typed here: one source of truth.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from cluster.catalog.cards import (
    CatalogError,
    KvCacheDtype,
    LayerKind,
    MambaShape,
    ModelDtype,
    QuantizationId,
    gpu_catalog,
    model_catalog,
)
from serving.strict import StrictModel


def _known_gpu(value: str) -> str:
    try:
        gpu_catalog().get(value)
    except CatalogError as exc:
        raise ValueError(str(exc)) from None
    return value


class ArchitectureValues(StrictModel):
    """Operator-supplied architecture values (for catalog fields marked `unknown`)."""

    hf_architecture: str | None = None
    num_layers: int | None = Field(default=None, gt=0)
    hidden_size: int | None = Field(default=None, gt=0)
    num_attention_heads: int | None = Field(default=None, gt=0)
    num_kv_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    intermediate_size: int | None = Field(default=None, gt=0)
    vocab_size: int | None = Field(default=None, gt=0)
    tie_word_embeddings: bool | None = None
    dtype: ModelDtype | None = None
    layer_pattern: tuple[LayerKind, ...] | None = None
    sliding_window: int | None = Field(default=None, gt=0)
    mamba: MambaShape | None = None

    def supplied(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k in self.model_fields_set}


class ModelSizing(StrictModel):
    """What the planner needs to size one model on GPUs."""

    catalog: str | None = Field(default=None, description="Model catalog id (govllm plan lists them).")
    hf_config: str | None = Field(
        default=None,
        description="config.json or checkpoint directory (relative to the spec) of the delivered weights.",
    )
    params_billion: float | None = Field(default=None, gt=0, description="Parameter count, billions.")
    architecture: ArchitectureValues | None = None
    gpu: str = Field(description="GPU class id; the spec's gpu_pools must have this class.")
    quantization: QuantizationId = "bf16"
    kv_cache_dtype: KvCacheDtype = "auto"
    traffic_share: float | None = Field(
        default=None, gt=0, le=1, description="Share of the peak requests this model serves."
    )
    concurrency: int | None = Field(
        default=None, gt=0, description="Sequences of max_model_len a replica must hold at once."
    )
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(
        default=None, gt=0, description="Evaluate this degree instead of choosing the smallest that fits."
    )
    decode_tokens_per_s: float | None = Field(
        default=None, gt=0, description="Measured decode tokens/s of one replica (replaces the roofline)."
    )
    overhead_gib: float | None = Field(
        default=None, ge=0, description="Measured non-KV overhead per GPU (replaces the estimate)."
    )
    on_demand: bool = Field(
        default=False,
        description="Scale to zero replicas when idle: the planner sets min replicas 0; the first "
        "request wakes a replica and waits up to router.cold_start_wait_s (loading the weights "
        "takes minutes on GPUs; docs/scheduling.md).",
    )

    @field_validator("catalog")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                model_catalog().get(value)
            except CatalogError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        return _known_gpu(value)

    @model_validator(mode="after")
    def _has_a_model(self) -> ModelSizing:
        if self.catalog is None and self.hf_config is None:
            raise ValueError("set sizing.catalog (a catalog model id) or sizing.hf_config (its config.json)")
        return self


class LoadSpec(StrictModel):
    """Expected load at peak; replica bounds are computed from it."""

    users: int = Field(gt=0, description="Staff who may use the models.")
    peak_requests_per_user_per_minute: float = Field(gt=0)
    mean_input_tokens: int = Field(gt=0)
    mean_output_tokens: int = Field(gt=0)
    baseline_fraction: float = Field(
        default=0.0, ge=0, le=1, description="Share of the peak that is always present (sets min replicas)."
    )
    min_replicas: int = Field(default=1, ge=1, description="Availability floor per model.")

    @property
    def peak_requests_per_s(self) -> float:
        return self.users * self.peak_requests_per_user_per_minute / 60.0


class GpuPool(StrictModel):
    """GPUs of one class the cluster may use."""

    gpu: str
    gpus_per_node: int | None = Field(default=None, gt=0, description="Default: the catalog's largest instance.")
    max_gpus: int | None = Field(default=None, gt=0, description="Capacity; planning fails above it.")
    reported_memory_gib: float | None = Field(
        default=None, gt=0, description="Total memory vLLM logs on this GPU (replaces the catalog value)."
    )

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        return _known_gpu(value)


#: Engine arguments the planner sets for GPU deployments (typing them again is rejected).
PLANNED_ENGINE_KWARGS: tuple[str, ...] = (
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "quantization",
    "kv_cache_dtype",
    "dtype",
)
