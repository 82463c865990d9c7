"""Counting the tokens a client really received, from the engine's own counts.

The router bills what it delivered, not what the engine meant to send: a
stream cut by a dead engine, a timeout or a client that hangs up must still
be billed for the tokens that went out, and only for those. vLLM can put its
exact running token count (`usage`, computed from the token ids it generated)
into every chunk of a stream (`stream_options.continuous_usage_stats`); the
router always asks for it, reads the count of each chunk it forwards, and
removes it again unless the client asked for it too, so clients see exactly
OpenAI's stream. Only chunks whose `send` returned count as delivered.

Per chunk this costs one regular-expression pass over the forwarded bytes
(the usage object sits at a fixed place in vLLM's serialisation; JSON string
escaping keeps prompt or answer text from ever matching it). The counts are
per choice: with `n` choices (and, for `/v1/completions`, several prompts)
each choice reports its own completion tokens and its prompt's tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

#: `,"usage":{...}` inside a chunk (the object may hold one level of nested details), with vLLM's
#: field order read directly (no JSON parse per chunk); group 3 catches any other order.
_USAGE = re.compile(
    rb',"usage":(?:\{"prompt_tokens":(\d+),"total_tokens":\d+,"completion_tokens":(\d+)'
    rb'(?:[^{}]|\{[^{}]*\})*\}|(\{(?:[^{}]|\{[^{}]*\})*\}))'
)
#: The choice index; vLLM always serialises it first in a choice.
_INDEX = re.compile(rb'"choices":\[\{"index":(\d+)')
_EMPTY_CHOICES = b'"choices":[]'
#: A chunk's text (chat delta content or reasoning, completion text): one token each. Empty text
#: counts too (a token that ends inside a multi-byte character decodes to ""); the opening
#: chunk that only announces the assistant's role does not.
_TEXT = re.compile(rb'(?<!"role":"assistant",)"(?:content|reasoning_content|text)":"')
_EVENT_START = b"data: "
_ERROR_START = b'data: {"error"'
_EVENT_END = b"\n\n"


@dataclass
class Observation:
    """What one forwarded block says about usage; applied once the block was sent."""

    per_choice: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (prompt, completion)
    final: dict | None = None
    text_chunks: int = 0  # chunks carrying text (counted only without per-chunk usage)

    def __bool__(self) -> bool:
        return bool(self.per_choice) or self.final is not None or self.text_chunks > 0


class StreamMeter:
    """Reads and strips the engine's usage counts from a forwarded SSE stream.

    Args:
        choices_per_prompt: the request's `n` (choice `i` belongs to prompt `i // n`).
        keep_chunk_usage: the client asked for `continuous_usage_stats` itself.
        keep_final_usage: the client asked for `include_usage` (the final usage chunk).
        prompt_estimate: set for a server without per-chunk usage (a vendor endpoint): a
            stream cut before its final usage is billed this many prompt tokens and one
            completion token per delivered chunk that carries text (servers send one token
            a chunk), and `estimated` says so.
    """

    def __init__(self, *, choices_per_prompt: int = 1, keep_chunk_usage: bool = False,
                 keep_final_usage: bool = False, prompt_estimate: int | None = None):
        self._n = max(1, choices_per_prompt)
        self._keep_chunk = keep_chunk_usage
        self._keep_final = keep_final_usage
        self._prompt: dict[int, int] = {}  # prompt index -> prompt tokens
        self._completion: dict[int, int] = {}  # choice index -> completion tokens
        self.final: dict | None = None
        self.error: dict | None = None
        self._prompt_estimate = prompt_estimate
        self._text_chunks = 0
        self.estimated = False

    def scan(self, block: bytes) -> tuple[bytes, Observation]:
        """Usage in `block` (complete SSE events) and the bytes to forward instead."""
        seen = Observation()
        if _ERROR_START in block:
            block = self._take_error(block)
        if self._prompt_estimate is not None:
            seen.text_chunks = len(_TEXT.findall(block))
        if b'"usage":{' not in block:
            return block, seen
        out: list[bytes] = []
        pos = 0
        for match in _USAGE.finditer(block):
            start = block.rfind(_EVENT_START, 0, match.start())
            counts = _counts(match)
            if counts is None:
                continue
            if block.endswith(_EMPTY_CHOICES, start, match.start()):  # the final usage event
                seen.final = {"prompt_tokens": counts[0], "completion_tokens": counts[1],
                              "total_tokens": counts[0] + counts[1]}
                if not self._keep_final:  # drop the whole event
                    end = block.find(_EVENT_END, match.end())
                    end = len(block) if end < 0 else end + len(_EVENT_END)
                    out.append(block[pos:start])
                    pos = end
                continue
            index = _INDEX.search(block, start, match.start())
            if index is not None:
                seen.per_choice[int(index.group(1))] = counts
            if not self._keep_chunk:
                out.append(block[pos:match.start()])
                pos = match.end()
        if pos == 0:
            return block, seen
        out.append(block[pos:])
        return b"".join(out), seen

    def commit(self, seen: Observation) -> None:
        """Count an observation whose block reached the client's connection."""
        for index, (prompt, completion) in seen.per_choice.items():
            self._prompt[index // self._n] = prompt
            self._completion[index] = max(completion, self._completion.get(index, 0))
        if seen.final is not None:
            self.final = seen.final
        self._text_chunks += seen.text_chunks

    def delivered(self) -> dict[str, int] | None:
        """Tokens delivered so far: the engine's final count once it was sent, else the sum."""
        if self.final is not None:
            return {k: int(self.final.get(k) or 0)
                    for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        if not self._prompt and not self._completion:
            if self._prompt_estimate is None or not self._text_chunks:
                return None
            self.estimated = True
            return {"prompt_tokens": self._prompt_estimate, "completion_tokens": self._text_chunks,
                    "total_tokens": self._prompt_estimate + self._text_chunks}
        prompt = sum(self._prompt.values())
        completion = sum(self._completion.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def _take_error(self, block: bytes) -> bytes:
        """Record the engine's mid-stream error and restate it in govllm's error vocabulary."""
        start = block.find(_ERROR_START)
        end = block.find(_EVENT_END, start)
        end = len(block) if end < 0 else end + len(_EVENT_END)
        try:
            error = json.loads(block[start + len(_EVENT_START): end].strip()).get("error")
        except (ValueError, AttributeError):
            error = None
        message = error.get("message") if isinstance(error, dict) else None
        self.error = {
            "message": f"The model failed while generating this answer, which is incomplete "
                       f"({message or 'no detail'}).",
            "type": "server_error", "param": None, "code": "engine_failed",
        }
        event = b"data: " + json.dumps({"error": self.error}, ensure_ascii=False).encode() + _EVENT_END
        return block[:start] + event + block[end:]


def _counts(match: re.Match) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) of a usage match."""
    if match.group(1) is not None:
        return int(match.group(1)), int(match.group(2))
    try:
        usage = json.loads(match.group(3))
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, TypeError, AttributeError):
        return None


def upstream_stream_options(client_options: dict | None) -> dict:
    """The stream options the router sends upstream: always per-chunk usage, whatever the client asked."""
    options = dict(client_options or {})
    options["include_usage"] = True
    options["continuous_usage_stats"] = True
    return options
