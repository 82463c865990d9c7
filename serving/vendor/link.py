"""How a router reaches one vendor endpoint: credential, TLS trust, URLs, the upstream body.

A link is built once per router replica from the declared VendorEndpoint. The
vendor's key is read from the environment variable the operator named and sent
as `Authorization: Bearer`; the client's key or token is never forwarded (the
router builds upstream headers from scratch). A link whose credential variable
is missing, or whose CA bundle cannot be read, stays out of rotation with the
reason in /readyz, so one misconfigured vendor never stops the router.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from typing import Any

from serving.config.vendor import VendorEndpoint, safe_url
from serving.texts import text_slots

logger = logging.getLogger("govllm.vendor")

#: vLLM's exact per-chunk usage (servers that support it); the others get OpenAI's final usage.
_PER_CHUNK = {"include_usage": True, "continuous_usage_stats": True}
_FINAL = {"include_usage": True}


class VendorLink:
    """Everything a router needs to send one request to one vendor endpoint."""

    def __init__(self, model_id: str, settings: VendorEndpoint, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.model_id = model_id
        self.settings = settings
        self.upstream_model = settings.upstream_model or model_id
        # answers name the model as the client knows it (docs/api.md), not by the vendor's name
        self.rename: tuple[bytes, bytes] | None = None
        if self.upstream_model != model_id:
            self.rename = (b'"model":' + json.dumps(self.upstream_model, ensure_ascii=False).encode(),
                           b'"model":' + json.dumps(model_id).encode())
        self.problem: str | None = None
        self.authorization: str | None = None
        if settings.credential_env is not None:
            key = env.get(settings.credential_env, "")
            if key:
                self.authorization = f"Bearer {key}"
            else:
                self.problem = (f"credential variable {settings.credential_env} is not set on this node "
                                "(Kubernetes: models[].source.endpoint.secret)")
        self.ssl: ssl.SSLContext | None = None
        if settings.base_url.startswith("https://"):
            try:
                self.ssl = ssl.create_default_context(cafile=settings.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                self.problem = f"CA bundle {settings.ca_bundle} unusable ({type(exc).__name__})"
        if self.problem:
            logger.warning("vendor endpoint for %s is unusable: %s", model_id, self.problem)

    @property
    def display_url(self) -> str:
        return safe_url(self.settings.base_url)

    def url(self, v1_path: str) -> str:
        """The vendor URL for one of govllm's `/v1/...` paths (base_url already ends in the version)."""
        return self.settings.base_url + v1_path.removeprefix("/v1")

    @property
    def health_url(self) -> str:
        return self.settings.base_url + self.settings.probe_path

    def headers(self, request_id: str) -> dict[str, str]:
        """Upstream headers, built from nothing: the client's own headers never pass."""
        out = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if self.authorization:
            out["Authorization"] = self.authorization
        return out

    def renamed(self, data: bytes) -> bytes:
        """`data` (a body or SSE events from the vendor) with the model named by govllm's id."""
        return data.replace(*self.rename) if self.rename is not None and self.rename[0] in data else data

    def body(self, payload: dict[str, Any], *, stream: bool) -> bytes:
        """The client's request with the vendor's model name and the usage reporting it supports."""
        out = dict(payload)
        out["model"] = self.upstream_model
        if stream:
            options = dict(payload.get("stream_options") or {})
            options.update(_PER_CHUNK if self.settings.stream_usage == "per_chunk" else _FINAL)
            if self.settings.stream_usage == "final":
                options.pop("continuous_usage_stats", None)
            out["stream_options"] = options
        return json.dumps(out, ensure_ascii=False).encode()


def prompt_chars(operation: str, payload: dict[str, Any]) -> int:
    """Characters of the prompt text: the estimate billed when a vendor reports no usage.

    Japanese tokenizers of the selected models make about one token per character or
    fewer, so characters bound the vendor's own count from above for Japanese text and
    over-bill English (about four characters a token). docs/vendors.md says so. A prompt
    given as token ids counts its ids.
    """
    chars = sum(len(container[key]) for container, key in text_slots(operation, payload))
    prompt = payload.get("prompt") if operation == "completions" else None
    if isinstance(prompt, list):  # token ids: one id, or one list of ids, per prompt
        chars += sum(len(p) if isinstance(p, list) else 1 for p in prompt if not isinstance(p, str))
    return chars


def estimate_usage(operation: str, payload: dict[str, Any], body: bytes) -> dict[str, int]:
    """Usage of a whole (non-streamed) answer without a `usage` object: characters, as above."""
    completion = 0
    try:
        choices = json.loads(body).get("choices") or []
    except (ValueError, AttributeError):
        choices = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        for text in (choice.get("text"), message.get("content"), message.get("reasoning_content")):
            if isinstance(text, str):
                completion += len(text)
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                completion += len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))
    prompt = prompt_chars(operation, payload)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
