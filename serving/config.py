"""Runtime configuration of the Serve application.

These models are what the running application needs, nothing more; they are
derived from the operator's cluster spec by `cluster/` and travel to the Ray
replicas as plain dicts (the same dicts `govllm render serve-config` writes
for KubeRay), so `serving/` never imports `cluster/`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

#: Import paths named in rendered Serve configs; kept here so rendering a config
#: never imports Ray Serve LLM or vLLM.
APP_IMPORT_PATH = "serving.app:build_app"
AUTOSCALING_POLICY_IMPORT_PATH = "serving.autoscaling:data_plane_policy"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRoute(_Strict):
    """What the router knows about one served model."""

    id: str = Field(pattern=MODEL_ID_PATTERN, description="Served model id (OpenAI `model`).")
    max_model_len: int = Field(gt=0, description="Context length the engine enforces.")
    owned_by: str = Field(default="govllm", description="`owned_by` in /v1/models.")
    family: str | None = Field(default=None, description="Architecture family, for aliases and docs.")
    revision: str = Field(default="unversioned", description="Weights revision, reported in /v1/models and audit.")


class RouterSettings(_Strict):
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
        return self


class AuthSettings(_Strict):
    """How the router authenticates callers."""

    enabled: bool = Field(default=True, description="Require `Authorization: Bearer <key>`.")
    key_store_path: str = Field(
        default=".govllm/keys.json",
        description="File of salted API-key hashes; re-read when it changes.",
    )
    reload_interval_s: float = Field(default=2.0, gt=0, description="How often to check the file.")


class ServingConfig(_Strict):
    """Everything the router deployment is constructed with."""

    app_name: str = Field(default="govllm")
    router: RouterSettings = Field(default_factory=RouterSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    models: tuple[ModelRoute, ...] = Field(min_length=1)
    aliases: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Alias -> model ids in fallback order; the first one with a live replica serves.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServingConfig:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model ids must be unique, got {ids}")
        for alias, targets in self.aliases.items():
            if alias in ids:
                raise ValueError(f"alias {alias!r} is also a model id; rename one of them")
            unknown = [t for t in targets if t not in ids]
            if unknown or not targets:
                raise ValueError(
                    f"alias {alias!r} must name served models; unknown: {unknown or '(empty)'}"
                )
        return self

    def model(self, model_id: str) -> ModelRoute | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None
