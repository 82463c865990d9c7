"""Runtime configuration of the Serve application.

These models are what the running application needs, nothing more; they are
derived from the operator's cluster spec by `cluster/` and travel to the Ray
replicas as plain dicts (the same dicts `govllm render serve-config` writes
for KubeRay), so `serving/` never imports `cluster/`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, model_validator

from serving.config.pii import PIIPolicy
from serving.config.tracing import TracingSettings
from serving.config.vendor import Price, VendorEndpoint
from serving.model_kinds import OPERATION_PATHS, ModelKind, serves
from serving.strict import StrictModel

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

#: Import paths named in rendered Serve configs; kept here so rendering a config
#: never imports Ray Serve LLM or vLLM.
APP_IMPORT_PATH = "serving.app:build_app"
AUTOSCALING_POLICY_IMPORT_PATH = "serving.autoscaling:data_plane_policy"


class ModelRoute(StrictModel):
    """What the router knows about one served model."""

    id: str = Field(pattern=MODEL_ID_PATTERN, description="Served model id (OpenAI `model`).")
    max_model_len: int = Field(gt=0, description="Context length the engine enforces.")
    owned_by: str = Field(default="govllm", description="`owned_by` in /v1/models.")
    family: str | None = Field(default=None, description="Architecture family, for aliases and docs.")
    revision: str = Field(default="unversioned", description="Weights revision, reported in /v1/models and audit.")
    max_confidentiality: Literal[1, 2] = Field(
        default=1, description="Highest confidentiality level (機密性) this model may receive."
    )
    max_ongoing_per_replica: int = Field(
        default=64,
        ge=1,
        description="Requests one replica of this model runs at once (the planner's max_num_seqs "
        "on GPUs); the router admits at most this many per live replica, shared among routers.",
    )
    max_queued_per_replica: int = Field(
        default=64,
        ge=0,
        description="Requests waiting in the routers for a slot, per live replica and priority "
        "class; beyond this the router sheds with 503 (429 to the tenant with the longest "
        "queue) and Retry-After.",
    )
    pii: PIIPolicy | None = Field(
        default=None, description="Personal-information policy this model adds (stricter only; "
        "docs/pii.md).",
    )
    on_demand: bool = Field(
        default=False,
        description="Scales to zero replicas: a request finding none wakes one and waits up "
        "to router.cold_start_wait_s (serving/router/cold_start.py).",
    )
    endpoint: VendorEndpoint | None = Field(
        default=None,
        description="Set for a vendor-hosted model: the router sends its requests there "
        "(serving/vendor/) instead of to a Ray Serve LLM deployment.",
    )
    price: Price | None = Field(default=None, description="Yen per million tokens, for cost reports.")
    kind: ModelKind = Field(
        default="chat", description="chat, embedding or rerank: which API operations the model "
        "serves (serving/model_kinds.py); others are refused before dispatch.",
    )
    tool_call_parser: str | None = Field(
        default=None, description="vLLM tool-call parser of the engine (tool_choice auto); "
        "reported in /v1/models.",
    )
    reasoning_parser: str | None = Field(
        default=None, description="vLLM reasoning parser of the engine; reported in /v1/models.",
    )

    @property
    def operations(self) -> tuple[str, ...]:
        """The API operations this model serves, in a stable order."""
        return tuple(op for op in OPERATION_PATHS if serves(self.kind, op))

    @property
    def capabilities(self) -> list[str]:
        """What /v1/models lists: the operations plus the engine features clients ask about."""
        out = list(self.operations)
        if self.kind == "chat":
            out += ["structured_outputs", "tool_choice_required"]
            if self.tool_call_parser:
                out.append("tools")
            if self.reasoning_parser:
                out.append("reasoning")
        return out

    @property
    def source(self) -> str:
        return "endpoint" if self.endpoint is not None else "self-hosted"


class PriorityClass(StrictModel):
    """One admission priority class (docs/scheduling.md, fair-admission).

    Classes are listed most important first: when a model is saturated, a freed slot goes to
    the first class with a waiting request, except that each later class is guaranteed
    `min_share` of the slots handed out while it waits, so it is slowed, never starved.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,31}$", description="Class name (header value, metric label).")
    min_share: float = Field(
        default=0.0, ge=0, lt=1,
        description="Share of freed slots this class gets while it has waiting requests, even "
        "when a more important class is waiting too (0 for the first class).",
    )
    default_for: tuple[Literal["agency", "municipality"], ...] = Field(
        default=(), description="Tenant kinds whose tenants are in this class unless they name one.",
    )


DEFAULT_PRIORITY_CLASSES = (
    PriorityClass(name="interactive", default_for=("agency",)),
    PriorityClass(name="api", min_share=0.2, default_for=("municipality",)),
    PriorityClass(name="batch", min_share=0.05),
)


#: Environment variable holding the data-plane credential on every Ray node: model replicas
#: refuse requests without it, and only router replicas send it.
DATA_PLANE_TOKEN_ENV = "GOVLLM_DATA_PLANE_TOKEN"


class RouterSettings(StrictModel):
    """Front-door behaviour; every value has a production-sensible default."""

    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    data_plane_host: str = Field(
        default="127.0.0.1",
        description="Bind address of model replicas' data-plane ports (0.0.0.0 in a multi-node cluster).",
    )
    max_ongoing_requests: int = Field(
        default=4096, ge=1, description="Requests one router replica holds before answering 503."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest accepted request body; larger gets 413."
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="Upper bound on one request, streaming included."
    )
    upstream_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Connecting to a model replica's data-plane port."
    )
    request_header_timeout_s: int = Field(
        default=10, ge=1,
        description="A client must send its complete request headers within this many seconds "
        "(HAProxy `timeout http-request`); slower clients get 408 before reaching a router.",
    )
    request_body_timeout_s: float = Field(
        default=30.0, gt=0,
        description="A client must send its whole request body within this many seconds (408).",
    )
    upstream_first_byte_timeout_s: float = Field(
        default=120.0, gt=0,
        description="From dispatch to the engine's first answer byte (queueing and prefill); "
        "a replica slower than this is taken out of rotation and the request retried once.",
    )
    stream_idle_timeout_s: float = Field(
        default=60.0, gt=0,
        description="Longest silence between two chunks of an answer before it is cut off (504).",
    )
    client_send_timeout_s: float = Field(
        default=60.0, gt=0,
        description="Longest a client may leave an answer unread (its connection takes no more "
        "data) before the router stops sending it and frees the request's admission slot; "
        "recorded 408 client_read_timeout, billed what was sent. Without it a client that stops "
        "reading holds a slot until HAProxy's client timeout (an hour).",
    )
    replica_probe_interval_s: float = Field(
        default=1.0, gt=0,
        description="How often every known replica is probed (GET /health): a failed probe takes "
        "it out of rotation, a passing one readmits it after its ejection time.",
    )
    log_encoding: Literal["JSON", "TEXT"] = Field(
        default="JSON",
        description="Ray Serve log encoding of govllm's deployments (LoggingConfig.encoding): "
        "JSON puts the access log's request id, tenant, model and status in their own keys.",
    )
    engine_stall_s: float = Field(
        default=120.0, gt=0,
        description="A replica whose engine has requests but produced no token for this long "
        "reports itself unhealthy (a hung engine passes vLLM's own health check); routers then "
        "retry what waits on it elsewhere. Above the longest prefill the GPU can take.",
    )
    replica_eject_s: float = Field(
        default=5.0, gt=0,
        description="Shortest time a failed replica stays out of rotation; doubles with each "
        "ejection in a row (up to 12x), so a replica that keeps failing is not retried often.",
    )
    replica_choice: Literal["prefix_affinity", "least_loaded", "round_robin"] = Field(
        default="prefix_affinity",
        description="How a model's replica is chosen: prefix_affinity sends requests with the "
        "same leading content to the replica that holds it in vLLM's prefix cache (rendezvous "
        "hashing, sticky until that replica is saturated); least_loaded: the less loaded of two "
        "random replicas; round_robin: in turn (docs/scheduling.md, prefix-affinity).",
    )
    prefix_affinity_chars: int = Field(
        default=512, ge=16,
        description="prefix_affinity: characters of a request's leading content (messages, "
        "prompt) hashed into its prefix key (about 350-500 tokens of Japanese); shorter "
        "requests have no key and go to the least loaded replica.",
    )
    prefix_affinity_balance_factor: float = Field(
        default=1.5, ge=1.0,
        description="prefix_affinity: a prefix's replica keeps taking it unless it would hold "
        "more than this factor x the mean load of the model's replicas (or more than its "
        "slots); then the key's next replica in rendezvous order takes it.",
    )
    max_queue_wait_s: float = Field(
        default=30.0, gt=0,
        description="Longest time a request waits in a router's queue for a model slot (then 503).",
    )
    cold_start_wait_s: float = Field(
        default=60.0, gt=0,
        description="Longest time a request for an on-demand model (replicas.min 0) with no "
        "replica waits for one to start; then 503 model_starting with Retry-After. The wait "
        "holds no admission slot.",
    )
    tenant_max_share: float = Field(
        default=0.5, gt=0, le=1,
        description="When a model is saturated, a tenant already holding this share of its "
        "slots is refused with 429 instead of queued, so one tenant cannot starve the others.",
    )
    fair_headroom: float = Field(
        default=0.1, ge=0, lt=1,
        description="While two or more tenants use a model, this share of its slots (at least "
        "one, when it has two or more) is kept for tenants below their weighted share of the "
        "slots, so a quiet tenant's request starts at once instead of waiting for a flood's "
        "slot to free. 0 turns it off (fully work-conserving).",
    )
    fair_active_s: float = Field(
        default=10.0, gt=0,
        description="A tenant that asked for a model within this many seconds counts as using "
        "it (for fair_headroom and the weighted shares).",
    )
    priority_classes: tuple[PriorityClass, ...] = Field(
        default=DEFAULT_PRIORITY_CLASSES, min_length=1,
        description="Admission priority classes, most important first (docs/scheduling.md): "
        "a saturated model serves the first class with waiting requests, fair between its "
        "tenants by weight; later classes keep their min_share.",
    )
    data_plane_token_env: str = Field(
        default=DATA_PLANE_TOKEN_ENV,
        description="Environment variable with the credential routers send to model replicas "
        "(generated per run locally; a Kubernetes Secret in the chart).",
    )
    registry_refresh_s: float = Field(
        default=1.0, gt=0, description="How often a router replica refreshes model endpoints."
    )
    min_replicas: int = Field(default=1, ge=1, description="Router replicas (>=2 in production).")
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: int = Field(
        default=256, ge=1, description="Autoscaling target per router replica."
    )

    @model_validator(mode="after")
    def _bounds(self) -> RouterSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"router.max_replicas ({self.max_replicas}) must be >= "
                f"router.min_replicas ({self.min_replicas})"
            )
        names = [c.name for c in self.priority_classes]
        if len(set(names)) != len(names):
            raise ValueError(f"router.priority_classes: duplicate name(s) in {names}")
        if self.priority_classes[0].min_share:
            raise ValueError(f"router.priority_classes[0] ({names[0]}) is served first; its "
                             "min_share must be 0")
        if sum(c.min_share for c in self.priority_classes) >= 1:
            raise ValueError("router.priority_classes: the min_share values must add up to less than 1")
        kinds = [k for c in self.priority_classes for k in c.default_for]
        if len(set(kinds)) != len(kinds):
            raise ValueError("router.priority_classes: a tenant kind is default_for two classes")
        return self

    def priority_class_of(self, tenant: TenantSettings) -> str:
        """The tenant's admission class: its own `priority`, else its kind's default class."""
        if tenant.priority is not None:
            return tenant.priority
        for cls in self.priority_classes:
            if tenant.kind in cls.default_for:
                return cls.name
        raise ValueError(f"tenants[{tenant.id}].priority is not set and no router.priority_classes "
                         f"entry is default_for {tenant.kind}")


class OIDCSettings(StrictModel):
    """OpenID Connect bearer tokens (JWTs) from the government's identity provider."""

    issuer: str = Field(description="Expected `iss` claim.")
    audience: str = Field(description="Expected `aud` claim.")
    jwks_url: str | None = Field(
        default=None,
        description="Where the issuer publishes its signing keys (JWKS). Default: the `jwks_uri` "
        "of the issuer's /.well-known/openid-configuration (OIDC discovery).",
    )
    tenant_claim: str = Field(default="tenant", description="Claim holding the govllm tenant id.")
    user_claim: str = Field(default="sub", description="Claim identifying the user.")
    algorithms: tuple[str, ...] = Field(default=("RS256", "ES256"), min_length=1)
    leeway_s: int = Field(default=30, ge=0, description="Clock skew tolerated on exp/nbf/iat.")
    jwks_refresh_s: float = Field(default=300.0, gt=0, description="How often signing keys are re-read.")
    ca_bundle: str | None = Field(
        default=None,
        description="PEM file of CAs to trust for the JWKS URL and discovery (a private PKI)."
    )

    @model_validator(mode="after")
    def _fails_safe(self) -> OIDCSettings:
        from serving.config.oidc_rules import oidc_problems  # dependency-free: no jwt import

        problems = oidc_problems(self.jwks_url, self.algorithms, issuer=self.issuer)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AuthSettings(StrictModel):
    """How the router authenticates callers."""

    enabled: bool = Field(default=True, description="Require `Authorization: Bearer <key or JWT>`.")
    oidc: OIDCSettings | None = Field(default=None, description="Also accept OIDC JWTs.")
    key_staleness_s: float = Field(
        default=5.0, gt=0,
        description="A router that has not confirmed its API-key records with the shared store "
        "for this long stops accepting API keys (503) until it can, so a revocation takes "
        "effect everywhere within this bound.",
    )


class TenantLimits(StrictModel):
    """Per-tenant limits; unset means unlimited. Enforced across all router replicas."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    monthly_token_budget: int | None = Field(
        default=None,
        ge=1,
        description="Hard cap on prompt + completion tokens per calendar month (Asia/Tokyo).",
    )

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute,
                                           self.monthly_token_budget))


UsageType = Literal["general-1", "general-2", "specialised-1", "specialised-2"]


class TenantSettings(StrictModel):
    """An agency or municipality allowed to use the platform."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str = Field(min_length=1, description="Display name, e.g. デジタル庁.")
    kind: Literal["agency", "municipality"]
    allowed_models: tuple[str, ...] = Field(
        default=("*",), description="Model ids this tenant may use; '*' for all."
    )
    max_confidentiality: Literal[1, 2] = Field(
        default=1, description="Highest confidentiality level (機密性) its requests may carry."
    )
    default_confidentiality: Literal[1, 2] = Field(
        default=1, description="Level assumed when a request has no x-confidentiality header."
    )
    usage_type: UsageType = Field(
        default="general-1",
        description="Periodic-report usage type: general-1 direct prompting, general-2 templates, "
        "specialised-1 RAG, specialised-2 fine-tuned.",
    )
    limits: TenantLimits = Field(default_factory=TenantLimits)
    priority: str | None = Field(
        default=None,
        description="Admission priority class (router.priority_classes); unset: the class that "
        "is default_for its kind (agencies interactive, municipalities api by default).",
    )
    weight: float = Field(
        default=1.0, gt=0, le=1000,
        description="Its share of a saturated model within its priority class, relative to the "
        "other tenants of the class (weighted fair queuing).",
    )
    pii: PIIPolicy | None = Field(
        default=None, description="Personal-information guard: detect, mask, refuse or route "
        "(docs/pii.md). Unset: requests are not scanned.",
    )

    @model_validator(mode="after")
    def _levels(self) -> TenantSettings:
        if self.default_confidentiality > self.max_confidentiality:
            raise ValueError(
                f"tenant {self.id}: default_confidentiality ({self.default_confidentiality}) "
                f"exceeds max_confidentiality ({self.max_confidentiality})"
            )
        return self

    def may_use(self, model_id: str) -> bool:
        return "*" in self.allowed_models or model_id in self.allowed_models


class StoreSettings(StrictModel):
    """The shared store (Redis) for keys, quotas, the usage ledger and feedback."""

    url: str = Field(default="redis://127.0.0.1:6379/0", description="redis:// or rediss:// URL.")
    url_env: str | None = Field(
        default=None,
        description="Environment variable that holds the URL (password included) on the replicas; "
        "when set it replaces `url`. Kubernetes fills it from a Secret, so the credential never "
        "appears in the Serve config or the RayService.",
    )
    namespace: str = Field(default="govllm", pattern=r"^[^{}]+$",
                           description="Key prefix, so apps can share a Redis (no braces: hash tags).")
    cluster: bool = Field(
        default=False, description="The URL names a node of a Redis Cluster (cluster-mode clients)."
    )
    timeout_s: float = Field(
        default=0.5, gt=0, description="Per-operation timeout; a slower store counts as down."
    )

    def resolved_url(self) -> str:
        """The URL to connect to: the `url_env` variable's value when configured, else `url`."""
        if self.url_env is None:
            return self.url
        import os

        value = os.environ.get(self.url_env)
        if not value:
            raise RuntimeError(
                f"store.url_env names {self.url_env}, which is not set in this process; set it "
                "(in Kubernetes: the chart's store.existingSecret) or remove url_env"
            )
        return value


class LocalKeyFile(StrictModel):
    type: Literal["local"] = "local"
    path: str = Field(description="32-byte key-encryption key (created 0600 if missing).")


class KmsKey(StrictModel):
    type: Literal["kms"] = "kms"
    key_id: str = Field(description="KMS key id or ARN that wraps the per-batch data keys.")
    region: str = Field(default="ap-northeast-1")
    endpoint_url: str | None = Field(default=None, description="For KMS-compatible services.")


class S3Sink(StrictModel):
    type: Literal["s3"] = "s3"
    bucket: str
    prefix: str = Field(default="audit")
    region: str = Field(default="ap-northeast-1", description="Keep audit logs in Japan.")
    endpoint_url: str | None = Field(default=None, description="For S3-compatible services.")
    sse_kms_key_id: str | None = Field(
        default=None, description="SSE-KMS key for the objects; default: the audit KMS key."
    )
    checksums: Literal["auto", "when_supported", "when_required"] = Field(
        default="auto",
        description="boto3 request/response checksums (serving/s3checksums.py): auto = "
        "when_required with an endpoint URL (S3-compatible services), when_supported on AWS.",
    )


class DirectorySink(StrictModel):
    """A local directory with the same object layout as the bucket (embedded default only)."""

    type: Literal["directory"] = "directory"
    path: str


class AuditSettings(StrictModel):
    enabled: bool = True
    spool_dir: str = Field(description="Durable local spool (per router replica subdirectory).")
    sink: S3Sink | DirectorySink = Field(discriminator="type")
    keys: LocalKeyFile | KmsKey = Field(discriminator="type")
    batch_max_records: int = Field(default=1000, ge=1)
    batch_max_s: float = Field(default=5.0, gt=0, description="Upload at least this often.")


def check_names(model_ids: Sequence[str], aliases: Mapping[str, Sequence[str]],
                tenants: Sequence[TenantSettings]) -> None:
    """The cross-checks of models, aliases and tenants, for the spec and the router's config alike.

    Model and tenant ids are unique, an alias is not also a model id and names only served
    models, and a tenant's allowed_models names only served models ("*": all). Raises
    ValueError naming the first problem.
    """
    dupes = sorted({i for i in model_ids if list(model_ids).count(i) > 1})
    if dupes:
        raise ValueError(f"models: duplicate id(s) {dupes}")
    for alias, targets in aliases.items():
        if alias in model_ids:
            raise ValueError(f"aliases: {alias!r} is also a model id; rename one of them")
        if not targets:
            raise ValueError(f"aliases: {alias!r} names no model")
        unknown = [t for t in targets if t not in model_ids]
        if unknown:
            raise ValueError(f"aliases: {alias!r} names unknown model(s) {unknown}")
    tenant_ids = [t.id for t in tenants]
    dupes = sorted({i for i in tenant_ids if tenant_ids.count(i) > 1})
    if dupes:
        raise ValueError(f"tenants: duplicate id(s) {dupes}")
    for tenant in tenants:
        unknown = [m for m in tenant.allowed_models if m != "*" and m not in model_ids]
        if unknown:
            raise ValueError(f"tenants[{tenant.id}].allowed_models: unknown model(s) {unknown}")


def check_priorities(router: RouterSettings, tenants: Sequence[TenantSettings]) -> None:
    """Every tenant's priority class exists (its own or its kind's default); ValueError if not."""
    names = {c.name for c in router.priority_classes}
    for tenant in tenants:
        name = router.priority_class_of(tenant)
        if name not in names:
            raise ValueError(f"tenants[{tenant.id}].priority: unknown class {name!r} "
                             f"(router.priority_classes: {', '.join(sorted(names))})")


class ServingConfig(StrictModel):
    """Everything the router deployment is constructed with."""

    app_name: str = Field(default="govllm")
    router: RouterSettings = Field(default_factory=RouterSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tenants: tuple[TenantSettings, ...] = Field(default=())
    store: StoreSettings = Field(default_factory=StoreSettings)
    audit: AuditSettings | None = Field(default=None)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    models: tuple[ModelRoute, ...] = Field(min_length=1)
    aliases: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Alias -> model ids in fallback order; the first one with a live replica serves.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServingConfig:
        check_names([m.id for m in self.models], self.aliases, self.tenants)
        check_priorities(self.router, self.tenants)
        return self

    def model(self, model_id: str) -> ModelRoute | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None
