"""The Serve application's arguments: what the renderer writes and `build_app` reads.

One pydantic model for both sides, so a field the renderer adds and the application does
not know (or the reverse) fails at render time and at start, not as a silent default.
The LLM configs stay plain dicts here: their schema is Ray Serve LLM's `LLMConfig`, which
`build_app` validates; importing it at render time would pull in Ray, and `govllm render`
runs where Ray and vLLM are not installed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from serving.config import ServingConfig


class AppArgs(BaseModel):
    """`serving.app:build_app`'s `args`: the router's config and one LLMConfig per engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    serving: ServingConfig
    llm_configs: list[dict[str, Any]]

    def to_config(self) -> dict[str, Any]:
        """The JSON-shaped dict a Serve config file (and KubeRay's serveConfigV2) carries."""
        return self.model_dump(mode="json")
