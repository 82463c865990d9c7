"""Server-sent events: the one parser for every stream govllm reads as a client.

The load-test client, the benchmark client and the audit record builder all read OpenAI-style
streams. Each once had its own parser and they disagreed on line endings (only one accepted
CRLF) and on multi-line `data:` fields. This one follows the WHATWG "event stream" rules that
matter for these streams:

* a line ends with CRLF, LF or CR; a CR at the end of a chunk waits for the next chunk,
  since an LF may follow it;
* an event ends at a blank line; its `data:` lines are joined with LF;
* one space after the colon is dropped; lines starting with `:` are comments; other fields
  (`event:`, `id:`, `retry:`) are ignored, since OpenAI-style streams carry all in `data`;
* an event without data dispatches nothing; bytes after the last blank line are not an event.

`events(raw)` reads a whole body; `SSEParser.feed(chunk)` reads it as it arrives.
"""

from __future__ import annotations

import re

_LINE = re.compile(rb"\r\n|\r|\n")


class SSEParser:
    """Incremental: feed body chunks, get the data of each event completed by them."""

    def __init__(self) -> None:
        self._pending = b""  # bytes of a line not yet ended
        self._data: list[bytes] = []  # data lines of the event being read

    def feed(self, chunk: bytes) -> list[bytes]:
        text = self._pending + chunk
        out: list[bytes] = []
        start = 0
        for match in _LINE.finditer(text):
            if match.group() == b"\r" and match.end() == len(text):
                break  # maybe the first half of a CRLF split across chunks
            self._line(text[start:match.start()], out)
            start = match.end()
        self._pending = text[start:]
        return out

    def close(self) -> list[bytes]:
        """End of body: a trailing CR ends its line; an unterminated event is dropped."""
        out: list[bytes] = []
        if self._pending.endswith(b"\r"):
            self._line(self._pending[:-1], out)
        self._pending, self._data = b"", []
        return out

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if not line:
            if self._data:
                out.append(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        # a line without a colon is a field with an empty value; only `data` matters here
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)


def events(raw: bytes) -> list[bytes]:
    """The data of every complete event of a whole body."""
    parser = SSEParser()
    return parser.feed(raw) + parser.close()
