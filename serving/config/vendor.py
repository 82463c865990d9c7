"""What an operator declares about a vendor-hosted endpoint (spec `models[].source.endpoint`).

The same pydantic models validate the cluster spec and travel to the router
inside its ServingConfig, so `govllm validate` refuses exactly what the router
would. The credential itself is never here: only the name of the environment
variable that holds it on the router's nodes (on Kubernetes filled from an
existing Secret named in `secret`).
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from serving.strict import StrictModel

_ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,127}$"
_K8S_NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"


class Price(StrictModel):
    """Contract prices, so usage reports and metrics can state cost in yen."""

    input_yen_per_million: float = Field(ge=0, description="Yen per million prompt tokens.")
    output_yen_per_million: float = Field(ge=0, description="Yen per million completion tokens.")

    def cost_yen(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_yen_per_million
                + completion_tokens * self.output_yen_per_million) / 1_000_000


class VendorTerms(StrictModel):
    """The data-use terms of the contract; every audit record of this model carries them."""

    provider: str = Field(min_length=1, description="Who runs the endpoint, e.g. Preferred Networks.")
    contract: str | None = Field(default=None, description="Contract or agreement reference.")
    trains_on_inputs: bool = Field(
        default=False, description="Whether the vendor may train on prompts (the programme requires false)."
    )
    retention_days: int | None = Field(
        default=None, ge=0, description="How long the vendor keeps prompts and outputs (0: not kept)."
    )
    data_location: str = Field(default="JP", description="Where the vendor processes and stores data.")


class VendorLimits(StrictModel):
    """The vendor's contractual limits, enforced across every router replica (shared store)."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(
        default=None, ge=1,
        description="Prompt + completion tokens per minute; a request is counted at admission "
        "with its largest possible size and corrected when it ends, so the contract holds.",
    )
    max_concurrency: int = Field(
        default=16, ge=1, description="Requests in flight at the vendor at once, all routers together."
    )


class SecretRef(StrictModel):
    """A Kubernetes Secret key that the chart puts into `credential_env` on the router's pods."""

    name: str = Field(pattern=_K8S_NAME)
    key: str = Field(default="api-key", pattern=r"^[-._a-zA-Z0-9]+$")


class EgressRule(StrictModel):
    """Where the endpoint lives, for the chart's egress NetworkPolicy (which cannot name hosts)."""

    cidrs: tuple[str, ...] = Field(default=(), description="Vendor address ranges, e.g. 10.20.0.0/24.")
    namespace: str | None = Field(default=None, description="An in-cluster endpoint's namespace.")
    pod_labels: dict[str, str] = Field(
        default_factory=dict, description="An in-cluster endpoint's pod labels (with `namespace`)."
    )

    @model_validator(mode="after")
    def _something(self) -> EgressRule:
        import ipaddress

        for cidr in self.cidrs:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad one
        if not self.cidrs and self.namespace is None:
            raise ValueError("egress needs cidrs, or namespace (with pod_labels) for an in-cluster endpoint")
        if self.pod_labels and self.namespace is None:
            raise ValueError("egress.pod_labels needs egress.namespace")
        return self


class VendorEndpoint(StrictModel):
    """A model served by an OpenAI-compatible server that govllm does not run."""

    base_url: str = Field(description="The API root, ending in the version: https://plamo.example.go.jp/v1.")
    api: Literal["openai"] = Field(
        default="openai",
        description="API style. Only OpenAI-compatible chat/completions is supported (vLLM, SGLang, "
        "TGI, most Japanese vendors); see docs/vendors.md for other styles.",
    )
    upstream_model: str | None = Field(
        default=None, max_length=256, description="The vendor's name for the model (default: the id)."
    )
    credential_env: str | None = Field(
        default=None, pattern=_ENV_NAME,
        description="Environment variable with the vendor's API key on the router's nodes; sent as "
        "`Authorization: Bearer`. Unset: the endpoint needs no key (an in-cluster engine).",
    )
    secret: SecretRef | None = Field(
        default=None, description="Kubernetes: the existing Secret the chart reads credential_env from."
    )
    ca_bundle: str | None = Field(
        default=None, description="PEM file of CAs to trust for base_url (a private PKI); default: system CAs."
    )
    allow_plaintext: bool = Field(
        default=False,
        description="Allow an http:// base_url (only for an in-cluster engine behind a NetworkPolicy).",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_byte_timeout_s: float = Field(
        default=60.0, gt=0, description="From sending to the first answer byte; slower opens the circuit."
    )
    stream_idle_timeout_s: float = Field(default=60.0, gt=0)
    stream_usage: Literal["per_chunk", "final"] = Field(
        default="final",
        description="`per_chunk`: the server supports vLLM's continuous_usage_stats (exact billing of "
        "cut streams); `final`: usage arrives at the end only (OpenAI's include_usage), and a cut "
        "stream is billed by counting what was delivered.",
    )
    probe_path: str = Field(
        default="/models", pattern=r"^/[-._~/a-zA-Z0-9]*$",
        description="GET base_url + this answers 200 when the endpoint is healthy.",
    )
    probe_interval_s: float = Field(
        default=15.0, gt=0, description="How often a healthy endpoint is probed (a tripped one: after its open time)."
    )
    open_s: float = Field(
        default=10.0, gt=0,
        description="Shortest time the circuit stays open after a failure; doubles with each failure "
        "in a row (up to 12x) before a half-open probe may close it.",
    )
    limits: VendorLimits = Field(default_factory=VendorLimits)
    terms: VendorTerms
    egress: EgressRule | None = Field(
        default=None, description="Kubernetes: required, so the NetworkPolicy allows only this address."
    )

    @model_validator(mode="after")
    def _url(self) -> VendorEndpoint:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("base_url must not carry credentials, a query or a fragment "
                             "(the key goes in credential_env)")
        if parts.scheme == "http" and not self.allow_plaintext:
            raise ValueError("base_url is plain http: prompts would cross the network unencrypted; "
                             "use https, or set allow_plaintext for an in-cluster engine")
        if self.base_url.endswith("/"):
            raise ValueError("base_url must not end with '/'")
        if self.terms.trains_on_inputs:
            raise ValueError("terms.trains_on_inputs is true: the programme forbids models whose "
                             "vendor trains on government inputs")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)


def safe_url(url: str) -> str:
    """A URL fit for logs and audit records: scheme, host, port and path only."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{re.sub(r'[^-._~/a-zA-Z0-9]', '', parts.path)}"
