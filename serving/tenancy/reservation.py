"""The most tokens a request can consume: what the monthly budget reserves at admission.

The bound must never be below what the engine can really bill, or the hard cap
leaks. Per prompt, prompt + completion is at most the model's context; a prompt
is at most its UTF-8 bytes in tokens (a byte-level tokenizer never makes more
tokens than bytes) plus the special tokens the engine adds (BOS, a leading
space piece), or its length when it is already token ids; the completion is at
most `max_tokens` (the whole context when unset). vLLM generates
max(n, best_of) sequences per prompt, and a `/v1/completions` batch runs
every prompt. A chat request is one conversation: its body's bytes bound the
templated prompt (the JSON around each message is longer than the template
markers the engine puts there), unless a message carries a non-text part
(an image, audio): those expand to tokens the body does not show, so such a
prompt is bounded by the context alone.
"""

from __future__ import annotations

from typing import Any

from serving.request import RequestContext

#: Tokens an engine may add to a text prompt beyond its bytes: BOS, EOS, a prefix-space piece.
SPECIAL_TOKENS_PER_PROMPT = 4
#: Operations that only read their input (pooling runners): no completion tokens.
POOLING_OPERATIONS = frozenset({"embeddings", "score", "rerank"})


def _count(value: Any) -> int | None:
    """A positive integer as the engine's lax validation would read it, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float) and value.is_integer():
        return int(value) if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value) or None
    return None


def _text_tokens(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass")) + SPECIAL_TOKENS_PER_PROMPT


def prompt_bounds(prompt: Any, body_bytes: int) -> list[int]:
    """Upper bounds on the tokens of each prompt of a `/v1/completions` request.

    A shape the engine will refuse anyway is bounded by the whole body, so no shape
    can make the reservation smaller than the usage it could cause.
    """
    if isinstance(prompt, str):
        return [_text_tokens(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [len(prompt)]  # one prompt of token ids: the engine adds nothing
        if all(isinstance(p, str) for p in prompt):
            return [_text_tokens(p) for p in prompt]
        if all(isinstance(p, list) for p in prompt):
            return [len(p) for p in prompt]
    return [body_bytes + SPECIAL_TOKENS_PER_PROMPT]


def _chat_bound(payload: dict[str, Any], body_bytes: int, context: int) -> int:
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            not (isinstance(part, dict) and part.get("type") == "text") for part in content
        ):
            return context
    return body_bytes


def _completion_limit(ctx: RequestContext, payload: dict[str, Any]) -> int | None:
    fields = ("max_completion_tokens", "max_tokens") if ctx.operation == "chat" else ("max_tokens",)
    asked = [c for c in (_count(payload.get(f)) for f in fields) if c is not None]
    return max(asked) if asked else None


def _input_bound(value: Any, body_bytes: int) -> list[int]:
    """Bounds of each text of a pooling request's field: a string, strings or token ids."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_text_tokens(value)]
    return prompt_bounds(value, body_bytes)


def _pooling_bound(ctx: RequestContext, payload: dict[str, Any], context: int) -> int:
    """Input tokens of an embeddings, score or rerank request: what the engine can bill.

    Every text is at most the context (longer is refused or truncated by the engine). A
    score or rerank pair runs as one sequence (a cross-encoder) or as two embeddings, so each
    pair is bounded by both texts, each capped at the context, which covers either; the
    queries are added once more in case the engine embeds them apart. Pooling requests
    generate nothing. Generous, never short: settlement bills the engine's own count.
    """
    body = len(ctx.raw_body)
    if ctx.operation == "embeddings":
        return sum(min(context, b) for b in _input_bound(payload.get("input"), body))
    if ctx.operation == "rerank":
        queries = _input_bound(payload.get("query"), body) or [0]
        documents = _input_bound(payload.get("documents"), body)
    else:
        first = next((payload[k] for k in ("text_1", "queries") if payload.get(k) is not None), None)
        second = next((payload[k] for k in ("text_2", "documents", "items") if payload.get(k) is not None),
                      None)
        queries, documents = _input_bound(first, body) or [0], _input_bound(second, body)
    # 1:N scores the one query against every document; N:N pairs them up: max() covers both
    query = min(context, max(queries))
    return sum(query + min(context, d) for d in documents) + sum(min(context, q) for q in queries)


def _responses_bound(ctx: RequestContext, payload: dict[str, Any], context: int) -> int:
    """A Responses request: like chat, its body's bytes bound the templated input (text only)."""
    items = payload.get("input")
    prompt = len(ctx.raw_body)
    if isinstance(items, list) and any(
        isinstance(part, dict) and part.get("type") not in (None, "input_text", "output_text", "text")
        for item in items if isinstance(item, dict) and isinstance(item.get("content"), list)
        for part in item["content"]
    ):
        prompt = context  # an image or file part expands to tokens the body does not show
    completion = _count(payload.get("max_output_tokens")) or context
    return min(context, prompt + completion)


def reservation_for(ctx: RequestContext) -> int:
    """Most tokens this request can consume (see the module docstring); 0 without candidates."""
    if not ctx.candidates:
        return 0
    payload = ctx.payload or {}
    context = max(m.max_model_len for m in ctx.candidates)
    if ctx.operation in POOLING_OPERATIONS:
        return _pooling_bound(ctx, payload, context)
    if ctx.operation == "responses":
        return _responses_bound(ctx, payload, context)
    completion = _completion_limit(ctx, payload) or context
    sequences = max(_count(payload.get("n")) or 1, _count(payload.get("best_of")) or 1)
    if ctx.operation == "completions":
        prompts = prompt_bounds(payload.get("prompt"), len(ctx.raw_body))
    else:
        prompts = [_chat_bound(payload, len(ctx.raw_body), context)]
    return sequences * sum(min(context, prompt + completion) for prompt in prompts)
