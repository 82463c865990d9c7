"""Turning the bytes an engine sent back into the answer an auditor reads.

Runs on the audit writer thread only: the router keeps the forwarded bytes
by reference and never parses them on the request path.

The record must hold everything the client was shown, not only the text:
tool calls (streamed as pieces per tool-call index, arguments split over
many events), reasoning (vLLM's `reasoning`; the older `reasoning_content`
spelling is accepted too), refusals, and error events that arrive inside a
stream (`data: {"error": {...}}`). An event that is not JSON is kept as
text rather than dropped, so nothing the client received is silently lost.
"""

from __future__ import annotations

import json
from typing import Any

from serving.sse import events as sse_events

_ERROR_FIELDS = ("message", "type", "code", "param")


class _Choice:
    """One choice being assembled from its deltas."""

    __slots__ = ("index", "text", "reasoning", "refusal", "tools", "finish_reason")

    def __init__(self, index: int):
        self.index = index
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def add_tool_delta(self, delta: dict) -> None:
        index = delta.get("index", len(self.tools))
        call = self.tools.setdefault(
            index if isinstance(index, int) else len(self.tools),
            {"id": None, "type": None, "function": {"name": None, "arguments": []}},
        )
        if delta.get("id") and not call["id"]:
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        if function.get("name") and not call["function"]["name"]:
            call["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"].append(function["arguments"])

    def chat(self) -> dict[str, Any]:
        tools = None
        if self.tools:
            tools = [
                {"index": i, "id": c["id"], "type": c["type"] or "function",
                 "function": {"name": c["function"]["name"],
                              "arguments": "".join(c["function"]["arguments"])}}
                for i, c in sorted(self.tools.items())
            ]
        out = {"index": self.index, "text": "".join(self.text),
               "reasoning": "".join(self.reasoning) if self.reasoning else None,
               "tool_calls": tools, "finish_reason": self.finish_reason}
        if self.refusal:
            out["refusal"] = "".join(self.refusal)
        return out

    def completion(self) -> dict[str, Any]:
        return {"index": self.index, "text": "".join(self.text), "finish_reason": self.finish_reason}


def _error_of(obj: dict) -> dict[str, Any]:
    err = obj.get("error")
    if isinstance(err, dict):
        return {k: err.get(k) for k in _ERROR_FIELDS}
    return {"message": str(err), "type": None, "code": None, "param": None}


def _other_fields(choice: _Choice, delta: dict) -> None:
    reasoning = delta.get("reasoning") or delta.get("reasoning_content")
    if reasoning:
        choice.reasoning.append(reasoning)
    if delta.get("refusal"):
        choice.refusal.append(delta["refusal"])
    for tool in delta.get("tool_calls") or ():
        if isinstance(tool, dict):
            choice.add_tool_delta(tool)


def _events(raw: bytes) -> list[bytes]:
    """The data of each SSE event (LF, CRLF or CR line endings; multi-line data joined)."""
    return sse_events(raw)  # serving/sse.py: the one SSE parser


def _responses_stream(raw: bytes) -> tuple[list[dict], list[dict]]:
    """A Responses API stream: the terminal event's output items, else the deltas so far."""
    text: list[str] = []
    errors: list[dict] = []
    for data in _events(raw):
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):
            errors.append({"message": None, "type": "unparsed_event", "code": None, "param": None,
                           "raw": data.decode("utf-8", "backslashreplace")})
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            response = event.get("response") or {}
            return list(response.get("output") or []), errors
        if "error" in event or kind == "error":
            errors.append(_error_of(event) if "error" in event else
                          {k: event.get(k) for k in _ERROR_FIELDS})
        elif isinstance(kind, str) and kind.endswith(".delta") and isinstance(event.get("delta"), str):
            text.append(event["delta"])
    return [{"type": "partial", "text": "".join(text)}] if text else [], errors


def _pooling_body(answer: dict, operation: str) -> list[dict]:
    """Embeddings, rerank and score answers without the vectors (the input is in the prompt)."""
    if operation == "embeddings":
        out = []
        for item in answer.get("data") or ():
            if not isinstance(item, dict):
                continue
            vector = item.get("embedding")
            size = len(vector) if isinstance(vector, list) else (
                len(vector) * 3 // 4 // 4 if isinstance(vector, str) else None)  # base64 float32
            out.append({"index": item.get("index"), "dimensions": size})
        return out
    if operation == "rerank":
        return [{"index": r.get("index"), "relevance_score": r.get("relevance_score")}
                for r in answer.get("results") or () if isinstance(r, dict)]
    return [{"index": r.get("index"), "score": r.get("score")}
            for r in answer.get("data") or () if isinstance(r, dict)]


def assemble_stream(raw: bytes, operation: str | None) -> tuple[list[dict], list[dict]]:
    """(choices, errors) of an SSE stream: every choice's deltas concatenated, in index order."""
    if operation == "responses":
        return _responses_stream(raw)
    choices: dict[int, _Choice] = {}
    errors: list[dict] = []
    chat = operation == "chat"
    for data in _events(raw):
        if data == b"[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            errors.append({"message": None, "type": "unparsed_event", "code": None,
                           "param": None, "raw": data.decode("utf-8", "backslashreplace")})
            continue
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            errors.append(_error_of(chunk))
        for c in chunk.get("choices") or []:
            if not isinstance(c, dict):
                continue
            i = c.get("index", 0)
            if not isinstance(i, int):
                i = 0
            choice = choices.get(i)
            if choice is None:
                choice = choices[i] = _Choice(i)
            if chat:
                delta = c.get("delta") or {}
                content = delta.get("content")
                if content:
                    choice.text.append(content)
                if len(delta) > (content is not None):  # more than text: the rarer fields
                    _other_fields(choice, delta)
            elif c.get("text"):
                choice.text.append(c["text"])
            if c.get("finish_reason"):
                choice.finish_reason = c["finish_reason"]
    ordered = [choices[i] for i in sorted(choices)]
    return [c.chat() if chat else c.completion() for c in ordered], errors


def assemble_body(body: bytes, operation: str | None) -> tuple[list[dict], list[dict]]:
    """(choices, errors) of a non-streamed answer; a body that is not JSON is kept as text."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return [{"index": 0, "text": body.decode("utf-8", "backslashreplace"), "finish_reason": None}], []
    if not isinstance(answer, dict):
        return [{"index": 0, "text": body.decode("utf-8", "backslashreplace"), "finish_reason": None}], []
    errors = [_error_of(answer)] if "error" in answer else []
    if operation in ("embeddings", "rerank", "score"):
        return _pooling_body(answer, operation), errors
    if operation == "responses":
        return list(answer.get("output") or []), errors
    out = []
    for c in answer.get("choices") or []:
        if not isinstance(c, dict):
            continue
        if operation == "chat":
            msg = c.get("message") or {}
            item = {"index": c.get("index", 0), "text": msg.get("content") or "",
                    "reasoning": msg.get("reasoning") or msg.get("reasoning_content"),
                    "tool_calls": msg.get("tool_calls") or None,
                    "finish_reason": c.get("finish_reason")}
            if msg.get("refusal"):
                item["refusal"] = msg["refusal"]
            out.append(item)
        else:
            out.append({"index": c.get("index", 0), "text": c.get("text") or "",
                        "finish_reason": c.get("finish_reason")})
    return out, errors
