"""Model and GPU catalogs: data files validated by pydantic.

Every number in `data/*.yaml` names its source (a key of the file's
`sources` table). A value a vendor has not published is the string
``unknown``; the planner refuses to guess it and asks the operator for it
(`--hf-config` with the delivered checkpoint's config.json, or the spec's
`sizing.architecture`). Nothing here is ever filled in by a default that
looks like data.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from cluster.catalog.vllm_features import REASONING_PARSERS, TOOL_CALL_PARSERS, check_name
from serving.strict import StrictModel

DATA_DIR = Path(__file__).parent / "data"

UNKNOWN = "unknown"
Unknown = Literal["unknown"]
QuantizationId = Literal["bf16", "fp16", "fp8", "int8", "awq", "gptq"]
KvCacheDtype = Literal["auto", "fp8"]
LayerKind = Literal["full", "sliding", "mamba"]
ModelDtype = Literal["bfloat16", "float16", "float32"]

QUANTIZATIONS: tuple[str, ...] = ("bf16", "fp16", "fp8", "int8", "awq", "gptq")
KV_CACHE_DTYPES: tuple[str, ...] = ("auto", "fp8")


class Source(StrictModel):
    title: str
    url: str | None = None
    note: str | None = None


class MambaShape(StrictModel):
    """Mamba2 state-space layer shape (as vLLM's MambaStateShapeCalculator reads it)."""

    num_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    d_state: int = Field(gt=0)
    d_conv: int = Field(gt=1)
    n_groups: int = Field(default=0, ge=0)


class ArchitectureShape(StrictModel):
    """A fully known architecture: what the planner computes with."""

    hf_architecture: str
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool
    dtype: ModelDtype = "bfloat16"
    layer_pattern: tuple[LayerKind, ...] = ("full",)
    sliding_window: int | None = Field(default=None, gt=0)
    mamba: MambaShape | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ArchitectureShape:
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        kinds = set(self.layer_pattern)
        if "sliding" in kinds and self.sliding_window is None:
            raise ValueError("layer_pattern has sliding layers: set sliding_window")
        if "mamba" in kinds and self.mamba is None:
            raise ValueError("layer_pattern has mamba layers: set mamba")
        if not kinds & {"full", "sliding"}:
            raise ValueError("layer_pattern needs at least one attention layer")
        return self

    def layer_kinds(self) -> tuple[LayerKind, ...]:
        """The kind of every layer, in order (the pattern repeated)."""
        pattern = self.layer_pattern
        return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

    def count(self, kind: LayerKind) -> int:
        return self.layer_kinds().count(kind)


ARCH_FIELDS: tuple[str, ...] = tuple(ArchitectureShape.model_fields)


class CatalogArchitecture(StrictModel):
    """An architecture as published: any field may be `unknown`."""

    source: str = Field(description="Key of `sources`: where these numbers come from.")
    hf_architecture: str | Unknown = UNKNOWN
    num_layers: int | Unknown = UNKNOWN
    hidden_size: int | Unknown = UNKNOWN
    num_attention_heads: int | Unknown = UNKNOWN
    num_kv_heads: int | Unknown = UNKNOWN
    head_dim: int | Unknown = UNKNOWN
    intermediate_size: int | Unknown = UNKNOWN
    vocab_size: int | Unknown = UNKNOWN
    tie_word_embeddings: bool | Unknown = UNKNOWN
    dtype: ModelDtype | Unknown = UNKNOWN
    layer_pattern: tuple[LayerKind, ...] | Unknown = UNKNOWN
    sliding_window: int | None | Unknown = UNKNOWN
    mamba: MambaShape | None | Unknown = UNKNOWN
    derived: dict[str, str] = Field(
        default_factory=dict, description="field -> how it follows from published values"
    )

    def unknown_fields(self) -> list[str]:
        return [name for name in ARCH_FIELDS if getattr(self, name) == UNKNOWN]

    def resolve(self, supplied: dict[str, Any] | None = None) -> ArchitectureShape:
        """The known shape, with operator-supplied values filling (or replacing) fields."""
        values = {name: getattr(self, name) for name in ARCH_FIELDS}
        values.update(supplied or {})  # None is a value here: "no sliding window", "no Mamba layers"
        missing = [name for name in ARCH_FIELDS if values[name] == UNKNOWN]
        if missing:
            raise UnknownValueError(missing)
        return ArchitectureShape.model_validate(values)


class WeightSource(StrictModel):
    kind: Literal["registry", "s3", "path", "vendor"]
    ref: str
    note: str | None = None


class Parsers(StrictModel):
    """What vLLM 0.32 parses for the family: tool calls (`tool_choice: auto`) and reasoning.

    None where no registered parser fits the model's format (the note says why); tool_choice
    `required` and named tools still work there, enforced by guided decoding whatever the
    format. The spec's models[].tool_call_parser / reasoning_parser take these values.
    """

    source: str = Field(description="Key of `sources`.")
    tool_call_parser: str | None
    reasoning_parser: str | None
    chat_template: str | None = Field(
        default=None, description="A vLLM example template the parser needs when the model's own "
        "does not render tools.")
    note: str

    @model_validator(mode="after")
    def _registered(self) -> Parsers:
        check_name(self.tool_call_parser, TOOL_CALL_PARSERS, "tool_call_parser")
        check_name(self.reasoning_parser, REASONING_PARSERS, "reasoning_parser")
        return self


class ModelCard(StrictModel):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    name: str
    vendor: str
    selected: bool = Field(description="One of the seven domestic LLMs selected in 2026-03.")
    stand_ins: tuple[str, ...] = Field(
        default=(), description="Public catalog models of the same family to rehearse with."
    )
    params_billion: float | Unknown
    params_source: str
    context_length: int | Unknown
    context_source: str
    license: str
    weights: tuple[WeightSource, ...] | Unknown
    quantizations: tuple[QuantizationId, ...] = Field(min_length=1)
    quantization_note: str
    architecture: CatalogArchitecture
    parsers: Parsers
    notes: tuple[str, ...] = ()

    def source_keys(self) -> list[str]:
        return [self.params_source, self.context_source, self.architecture.source, self.parsers.source]


class InstanceType(StrictModel):
    cloud: str
    name: str
    gpus: int = Field(gt=0)


class GpuClass(StrictModel):
    id: str
    name: str
    memory_gb: float = Field(gt=0, description="The vendor's nominal capacity (an A100 40GB has 40 GiB).")
    reported_memory_gib: float = Field(
        gt=0, description="Total memory as torch/vLLM report it: what gpu_memory_utilization multiplies."
    )
    reported_memory_kind: Literal["measured", "estimate"]
    bandwidth_gbs: float = Field(gt=0, description="Peak memory bandwidth, GB/s.")
    bf16_dense_tflops: float = Field(gt=0)
    fp8_native: bool
    compute_capability: str
    interconnect: Literal["nvlink", "pcie"]
    ray_accelerator_type: str
    instance_types: tuple[InstanceType, ...] = Field(min_length=1)
    sources: tuple[str, ...] = Field(min_length=1)

    @property
    def memory_bytes(self) -> int:
        """The total vLLM budgets against (GiB as reported, in bytes)."""
        return int(self.reported_memory_gib * 2**30)

    @property
    def max_gpus_per_node(self) -> int:
        return max(i.gpus for i in self.instance_types)


class UnknownValueError(ValueError):
    """The planner needs values the catalog marks `unknown`."""

    def __init__(self, fields: list[str]):
        self.fields = fields
        super().__init__(", ".join(fields))


class CatalogError(LookupError):
    """An unknown catalog name; the message lists the valid ones."""


class ModelCatalog(StrictModel):
    sources: dict[str, Source]
    models: tuple[ModelCard, ...]

    @model_validator(mode="after")
    def _references(self) -> ModelCatalog:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate model ids")
        for model in self.models:
            missing = [k for k in model.source_keys() if k not in self.sources]
            if missing:
                raise ValueError(f"{model.id}: unknown source key(s) {missing}")
            strays = [s for s in model.stand_ins if s not in ids]
            if strays:
                raise ValueError(f"{model.id}: stand_ins name unknown model(s) {strays}")
        return self

    def get(self, model_id: str) -> ModelCard:
        return _find(self.models, model_id, "model", "catalog models")


class GpuCatalog(StrictModel):
    sources: dict[str, Source]
    gpus: tuple[GpuClass, ...]

    @model_validator(mode="after")
    def _references(self) -> GpuCatalog:
        for gpu in self.gpus:
            missing = [k for k in gpu.sources if k not in self.sources]
            if missing:
                raise ValueError(f"{gpu.id}: unknown source key(s) {missing}")
        return self

    def get(self, gpu_id: str) -> GpuClass:
        return _find(self.gpus, gpu_id, "GPU", "GPU classes")


def _find(entries: tuple[Any, ...], wanted: str, kind: str, plural: str) -> Any:
    for entry in entries:
        if entry.id == wanted:
            return entry
    raise CatalogError(f"unknown {kind} {wanted!r}; {plural}: {', '.join(e.id for e in entries)}")


def _load(name: str, model: type[BaseModel]) -> Any:
    path = DATA_DIR / name
    try:
        return model.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as exc:
        raise CatalogError(f"{path}: invalid catalog: {exc}") from None


@lru_cache(maxsize=1)
def model_catalog() -> ModelCatalog:
    return _load("models.yaml", ModelCatalog)


@lru_cache(maxsize=1)
def gpu_catalog() -> GpuCatalog:
    return _load("gpus.yaml", GpuCatalog)
