"""The one SSE parser (serving/sse.py): every line ending, every split, against the spec."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from serving.sse import SSEParser, events

STREAM = (b'data: {"a":1}\n\n'
          b": keep-alive comment\n\n"
          b"event: message\nid: 7\ndata: first line\ndata:second line\n\n"
          b"data\n\n"
          b"data: [DONE]\n\n")
EXPECTED = [b'{"a":1}', b"first line\nsecond line", b"", b"[DONE]"]


def test_lf_crlf_and_cr_endings_give_the_same_events():
    assert events(STREAM) == EXPECTED
    assert events(STREAM.replace(b"\n", b"\r\n")) == EXPECTED
    assert events(STREAM.replace(b"\n", b"\r")) == EXPECTED


def test_an_unterminated_event_is_not_an_event():
    assert events(b"data: 1\n\ndata: 2\n") == [b"1"]
    assert events(b"data: 1\r\n\r") == [b"1"]  # a final CR ends its line at the end of the body


@given(st.sampled_from([b"\n", b"\r\n", b"\r"]), st.lists(st.integers(0, len(STREAM) * 2), max_size=12))
def test_any_split_of_the_body_gives_the_same_events(ending, cuts):
    body = STREAM.replace(b"\n", ending)
    parser, got, start = SSEParser(), [], 0
    for cut in sorted(c for c in cuts if c <= len(body)):
        got += parser.feed(body[start:cut])
        start = cut
    got += parser.feed(body[start:]) + parser.close()
    assert got == EXPECTED


def test_a_crlf_split_between_chunks_is_one_line_ending():
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r") == []  # CRLF ended the data line; this CR may start a CRLF
    assert parser.feed(b"\n") == [b"x"]  # ... and did: the blank line ends the event once
