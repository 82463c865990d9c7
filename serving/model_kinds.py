"""What kind of model a deployment is, and which API operations each kind serves.

A chat model (vLLM's generate runner) answers chat, completions and the Responses API;
an embedding model (vLLM's pooling runner, embed) answers embeddings and, by cosine
similarity of its embeddings, score and rerank; a rerank model (pooling runner,
classify with one label: a cross-encoder) answers score and rerank only. The router
refuses an operation on a model of the wrong kind before anything is dispatched, with
a message that names the models that do serve it, rather than letting the engine
answer 404 for a path it did not mount.

This module is imported by the router and by `cluster/`, so both agree on one table.
"""

from __future__ import annotations

from typing import Literal, get_args

ModelKind = Literal["chat", "embedding", "rerank"]
KINDS: tuple[str, ...] = get_args(ModelKind)

#: The router's operation -> the model replica's path (vLLM's OpenAI app).
OPERATION_PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "responses": "/v1/responses",
    "embeddings": "/v1/embeddings",
    "score": "/v1/score",
    "rerank": "/v1/rerank",
}

#: Operations each kind of model serves.
OPERATIONS: dict[str, frozenset[str]] = {
    "chat": frozenset({"chat", "completions", "responses"}),
    "embedding": frozenset({"embeddings", "score", "rerank"}),
    "rerank": frozenset({"score", "rerank"}),
}

#: vLLM engine arguments that make an engine of each kind (ModelConfig.runner / convert).
ENGINE_KWARGS: dict[str, dict[str, str]] = {
    "chat": {},
    "embedding": {"runner": "pooling", "convert": "embed"},
    "rerank": {"runner": "pooling", "convert": "classify"},
}


def serves(kind: str, operation: str) -> bool:
    """Whether a model of `kind` answers `operation`."""
    return operation in OPERATIONS.get(kind, frozenset())


def kinds_serving(operation: str) -> tuple[str, ...]:
    """The kinds of model that answer `operation`, for error messages."""
    return tuple(k for k in KINDS if operation in OPERATIONS[k])
