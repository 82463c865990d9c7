"""The part of the OpenAI request schema the router itself guarantees.

vLLM validates the full schema again on the model replica and answers
anything else with its own 400; the router checks what it must know to be
correct before it picks a model (the model name, the message roles, token
limits, streaming options), and what vLLM is lenient about (it accepts any
message role). Unknown fields pass through untouched, so vLLM extensions
(`min_tokens`, `ignore_eos`, guided decoding, ...) keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from serving.router.errors import APIError

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class ChatMessage(_Open):
    role: Role
    content: str | list[dict[str, Any]] | None = None


class _Sampling(_Open):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]


def validate(model_cls: type[_Sampling], payload: Any) -> _Sampling:
    """Validated request, or a 400 that names the first offending field."""
    return validate_model(model_cls, payload)


def validate_model(model_cls: type[BaseModel], payload: Any) -> Any:
    """Any router request model: a JSON object that validates, or a 400 naming the field."""
    if not isinstance(payload, dict):
        raise APIError(
            400,
            f"Request body must be a JSON object, got {type(payload).__name__}.",
            code="invalid_request_body",
        )
    try:
        return model_cls.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise APIError(
            400,
            f"Invalid value for '{param}': {first['msg']}{suffix}.",
            code="missing_required_parameter" if first["type"] == "missing" else "invalid_value",
            param=param,
        ) from None
