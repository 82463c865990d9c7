"""Measuring one streamed chat completion from the bytes as they arrive.

The meter is fed raw network reads with the time each arrived; serving/sse.py cuts them into SSE events
(a read may hold several events or half of one) and the meter records:

* TTFT: send -> the first event whose delta has non-empty `content`. Role-only first chunks
  and empty deltas (servers hold back incomplete multi-byte characters) do not count.
* inter-token latencies: gaps between successive content-bearing events, as the client sees
  them (events that arrive in one read have a gap of 0, as in vLLM's benchmark client).
* output tokens N from the `usage` event (`stream_options.include_usage`), never from chunk
  counts, which servers batch.
* E2E: send -> `data: [DONE]`.

The same parser as loadtest/serving_bench.py and the audit record builder, with the timestamps
kept per event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from serving.sse import SSEParser


@dataclass
class StreamMeasurement:
    """What one stream delivered; times in seconds since the request was sent."""

    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    model: str | None = None
    finish_reason: str | None = None
    text: str = ""
    done: bool = False
    error: str | None = None  # an in-stream error event (OpenAI shape) if the server sent one
    bytes_read: int = 0


class StreamMeter:
    """Feed `(data, now)` pairs from the response body; read `.result` when the body ends."""

    def __init__(self, started_at: float, *, keep_text: bool = True):
        self._start = started_at
        self._sse = SSEParser()
        self._last_content_at: float | None = None
        self._keep_text = keep_text
        self._parts: list[str] = []
        self.result = StreamMeasurement()

    def feed(self, data: bytes, now: float) -> None:
        self.result.bytes_read += len(data)
        for payload in self._sse.feed(data):  # serving/sse.py: the one SSE parser
            self._event(payload, now)

    def _event(self, payload: bytes, now: float) -> None:
        if not payload:
            return
        if payload == b"[DONE]":
            self.result.done = True
            self.result.e2e_s = now - self._start
            self.result.text = "".join(self._parts)
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            self.result.error = f"unparseable stream event: {payload[:120]!r}"
            return
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            self.result.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            return
        if self.result.model is None and chunk.get("model"):
            self.result.model = chunk["model"]
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                if self.result.ttft_s is None:
                    self.result.ttft_s = now - self._start
                else:
                    self.result.itl_s.append(now - self._last_content_at)
                self._last_content_at = now
                if self._keep_text:
                    self._parts.append(content)
            if choice.get("finish_reason"):
                self.result.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        if usage:
            self.result.output_tokens = usage.get("completion_tokens")
            self.result.prompt_tokens = usage.get("prompt_tokens")
