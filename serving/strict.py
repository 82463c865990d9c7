"""The one base of govllm's configuration models: unknown fields are errors, values frozen.

A misspelt key in a spec, a Serve config or an SLO file must fail validation where it is
written, not fall back to a default that nobody chose; and a validated configuration is
shared by every step of the request path, so nothing may change it afterwards.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Forbids unknown fields; frozen (a model that fills derived fields in its own validator
    overrides `frozen` for itself)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
