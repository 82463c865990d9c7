"""Where the input text of every operation's request sits.

Every step that reads or rewrites prompt text (the personal-information guard, the
audit record, the token reservation, a vendor's usage estimate) must see all of it,
whatever the operation; a field forgotten here would be a way around the guard.
"""

from __future__ import annotations

from typing import Any

#: The request fields that hold input text, per operation (the audit record's `prompt`).
INPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "completions": ("prompt",),
    "embeddings": ("input",),
    "rerank": ("query", "documents"),
    "score": ("text_1", "text_2", "queries", "documents", "items"),
    "responses": ("instructions", "input"),
}

Slot = tuple[Any, Any]  # (container, key): container[key] is a str


def _strings(container: Any, key: Any, out: list[Slot]) -> None:
    value = container[key]
    if isinstance(value, str):
        out.append((container, key))
    elif isinstance(value, list):
        out += [(value, i) for i, v in enumerate(value) if isinstance(v, str)]


def _message(item: dict, out: list[Slot]) -> None:
    """A chat message or Responses item: string content, or content parts with text."""
    content = item.get("content")
    if isinstance(content, str):
        out.append((item, "content"))
    elif isinstance(content, list):
        out += [(part, "text") for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)]


def _response_items(items: list, out: list[Slot]) -> None:
    """Responses API input items: messages, and function_call_output items' output."""
    for item in items:
        if not isinstance(item, dict):
            continue
        _message(item, out)
        if isinstance(item.get("output"), str):  # a function_call_output item
            out.append((item, "output"))


def text_slots(operation: str, payload: dict[str, Any]) -> list[Slot]:
    """(container, key) of every input text of a request of `operation`, in order."""
    out: list[Slot] = []
    if operation == "chat":
        for message in payload.get("messages") or ():
            if isinstance(message, dict):
                _message(message, out)
        return out
    for name in INPUT_FIELDS.get(operation, ()):
        if name not in payload:
            continue
        if operation == "responses" and name == "input" and isinstance(payload[name], list):
            _response_items(payload[name], out)
        else:
            _strings(payload, name, out)
    return out


def recorded_input(operation: str, payload: dict[str, Any]) -> Any:
    """The audit record's `prompt`: the one input field, or the input fields present."""
    names = INPUT_FIELDS.get(operation, ("prompt",))
    if len(names) == 1:
        return payload.get(names[0])
    return {name: payload[name] for name in names if name in payload}
