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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from serving.request import APIError

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


class _NotStreamed(_Open):
    """A request whose answer is one JSON body (embeddings, score, rerank)."""

    model: str = Field(min_length=1)
    stream: Literal[False] = False
    stream_options: None = None


class EmbeddingRequest(_NotStreamed):
    """OpenAI's embeddings request (vLLM also accepts chat-style `messages`; not routed)."""

    input: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)


ScoreText = str | list[str]


class RerankRequest(_NotStreamed):
    """The Cohere/Jina rerank shape vLLM serves: one query, documents, `top_n`."""

    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=0)


class ScoreRequest(_NotStreamed):
    """vLLM's score request: `text_1`/`text_2` (or its `queries` with `documents` or `items`)."""

    text_1: ScoreText | None = None
    text_2: ScoreText | None = None
    queries: ScoreText | None = None
    documents: ScoreText | None = None
    items: ScoreText | None = None

    @model_validator(mode="after")
    def _one_pair(self) -> ScoreRequest:
        pairs = [(a, b) for a, b in (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"))
                 if getattr(self, a) is not None and getattr(self, b) is not None]
        if len(pairs) != 1:
            raise ValueError("send text_1 and text_2 (or queries with documents or items)")
        for name in pairs[0]:
            if getattr(self, name) in ("", []):
                raise ValueError(f"{name} must not be empty")
        return self


class ResponsesRequest(_Open):
    """The Responses API: `input` text or items; no stored responses (none are kept)."""

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(min_length=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: StrictBool = False
    stream_options: None = None
    previous_response_id: str | None = None
    background: StrictBool | None = None
    store: StrictBool | None = None  # accepted and ignored: vLLM keeps nothing (its store is off)

    @field_validator("previous_response_id", "background")
    @classmethod
    def _not_stored(cls, value: Any) -> Any:
        if value:
            raise ValueError("govllm keeps no responses (nothing is stored); send the earlier turns "
                             "in `input` and run the request in the foreground")
        return value


def validate(model_cls: type[_Open], payload: Any) -> Any:
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
        what = f"Invalid value for '{param}'" if param else "Invalid request"
        raise APIError(
            400,
            f"{what}: {first['msg']}{suffix}.",
            code="missing_required_parameter" if first["type"] == "missing" else "invalid_value",
            param=param,
        ) from None
