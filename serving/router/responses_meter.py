"""Counting the tokens of a streamed Responses API answer (`POST /v1/responses`, stream=true).

The Responses stream is typed SSE events (`event: response.output_text.delta` ...), with no
per-chunk usage and no `data: [DONE]`: it ends with a terminal event
(`response.completed`, `response.incomplete` or `response.failed`) whose `response.usage`
holds vLLM's exact `input_tokens` and `output_tokens`. This meter has the StreamMeter's
interface (serving/router/metering.py) so the dispatcher relays both alike:

* a stream that reached its terminal event is billed the engine's count;
* a stream cut before it (engine death, timeout, client gone) is billed an estimate, and
  `estimated` says so: the input's UTF-8 bytes (a byte-level tokenizer never makes more
  tokens than bytes) and one token per delivered delta event (vLLM sends one per token).

Only the terminal events are parsed as JSON; deltas are counted by their event line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_TERMINAL = re.compile(rb"^event: (response\.completed|response\.incomplete|response\.failed)\ndata: (.*)$",
                       re.M)
_DELTA = re.compile(rb"^event: response\.[a-z_.]*delta$", re.M)
_ERROR = re.compile(rb"^event: error\ndata: (.*)$", re.M)


@dataclass
class ResponsesObservation:
    """What one forwarded block says about usage; applied once the block was sent."""

    final: dict | None = None
    deltas: int = 0
    terminal: bool = False


class ResponsesMeter:
    """Reads usage from a forwarded Responses stream (see the module docstring)."""

    def __init__(self, *, input_estimate: int):
        self._input_estimate = input_estimate
        self._deltas = 0
        self.final: dict | None = None
        self.error: dict | None = None
        self.complete = False  # the terminal event went out: the stream is whole
        self.estimated = False

    def scan(self, block: bytes) -> tuple[bytes, ResponsesObservation]:
        seen = ResponsesObservation(deltas=len(_DELTA.findall(block)))
        for match in _TERMINAL.finditer(block):
            seen.terminal = True
            try:
                usage = (json.loads(match.group(2)).get("response") or {}).get("usage")
            except (ValueError, AttributeError):
                usage = None
            if isinstance(usage, dict):
                prompt, completion = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
                seen.final = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
        error = _ERROR.search(block)
        if error is not None:
            try:
                message = json.loads(error.group(1)).get("message")
            except (ValueError, AttributeError):
                message = None
            self.error = {"message": f"The model failed while generating this answer, which is "
                                     f"incomplete ({message or 'no detail'}).",
                          "type": "server_error", "param": None, "code": "engine_failed"}
        return block, seen

    def commit(self, seen: ResponsesObservation) -> None:
        self._deltas += seen.deltas
        if seen.final is not None:
            self.final = seen.final
        self.complete = self.complete or seen.terminal

    def delivered(self) -> dict[str, int] | None:
        if self.final is not None:
            self.estimated = False
            return dict(self.final)
        if not self._deltas:
            return None
        self.estimated = True
        return {"prompt_tokens": self._input_estimate, "completion_tokens": self._deltas,
                "total_tokens": self._input_estimate + self._deltas}


def input_bytes(payload: dict) -> int:
    """UTF-8 bytes of a Responses request's input and instructions: the cut stream's estimate."""
    size = 0
    for name in ("instructions", "input"):
        value = payload.get(name)
        if isinstance(value, str):
            size += len(value.encode("utf-8", "surrogatepass"))
        elif value is not None:
            size += len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return size
