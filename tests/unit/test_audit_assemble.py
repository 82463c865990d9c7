"""The answer in the audit record is everything the client was shown, streamed or not.

The streams are vLLM's own SSE encoding of its delta messages (tool-call deltas split over
events per tool-call index, `reasoning` deltas, error events inside a stream).
"""

from __future__ import annotations

import json

from serving.audit.assemble import assemble_body, assemble_stream


def sse(*events: dict | str, sep: bytes = b"\n\n") -> bytes:
    out = b""
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
        out += b"data: " + data.encode() + sep
    return out


def delta(index: int = 0, finish: str | None = None, **fields) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": fields, "finish_reason": finish}]}


def tool(index: int, *, id: str | None = None, name: str | None = None, args: str | None = None) -> dict:
    call: dict = {"index": index}
    if id:
        call.update(id=id, type="function")
    function = {k: v for k, v in {"name": name, "arguments": args}.items() if v is not None}
    if function:
        call["function"] = function
    return call


def test_streamed_tool_calls_are_merged_per_index():
    raw = sse(
        delta(role="assistant", content=""),
        delta(tool_calls=[tool(0, id="call_a", name="get_weather", args="")]),
        delta(tool_calls=[tool(0, args='{"city": "')]),
        delta(tool_calls=[tool(1, id="call_b", name="get_time", args='{"tz": ')]),
        delta(tool_calls=[tool(0, args='東京"}')]),
        delta(tool_calls=[tool(1, args='"Asia/Tokyo"}')]),
        delta(finish="tool_calls"),
        "[DONE]",
    )
    (choice,), errors = assemble_stream(raw, "chat")
    assert errors == []
    assert choice["finish_reason"] == "tool_calls" and choice["text"] == ""
    assert choice["tool_calls"] == [
        {"index": 0, "id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "東京"}'}},
        {"index": 1, "id": "call_b", "type": "function",
         "function": {"name": "get_time", "arguments": '{"tz": "Asia/Tokyo"}'}},
    ]


def test_reasoning_in_either_spelling_and_several_choices():
    raw = sse(
        delta(0, reasoning="まず"),
        delta(1, reasoning_content="考える"),
        delta(0, reasoning="考える"),
        delta(0, content="答え"),
        delta(1, content="別の答え", finish="stop"),
        delta(0, finish="length"),
    )
    choices, _ = assemble_stream(raw, "chat")
    assert [(c["index"], c["reasoning"], c["text"], c["finish_reason"]) for c in choices] == [
        (0, "まず考える", "答え", "length"), (1, "考える", "別の答え", "stop")]
    assert all(c["tool_calls"] is None for c in choices)


def test_an_error_event_inside_a_stream_is_kept():
    raw = sse(
        delta(content="途中まで"),
        {"error": {"message": "Internal server error", "type": "InternalServerError", "param": None,
                   "code": 500}},
        "[DONE]",
    )
    (choice,), errors = assemble_stream(raw, "chat")
    assert choice["text"] == "途中まで"
    assert errors == [{"message": "Internal server error", "type": "InternalServerError",
                       "code": 500, "param": None}]


def test_crlf_separated_events_and_multi_line_data():
    raw = sse(delta(content="改行"), delta(content="区切り", finish="stop"), sep=b"\r\n\r\n")
    raw += b': keep-alive comment\r\n\r\ndata: {"choices":[{"index":0,\r\ndata: "delta":{"content":"!"}}]}\r\n\r\n'
    (choice,), errors = assemble_stream(raw, "chat")
    assert (choice["text"], choice["finish_reason"], errors) == ("改行区切り!", "stop", [])


def test_an_event_that_is_not_json_is_kept_as_text():
    raw = sse(delta(content="a")) + b"data: {not json\n\n"
    (choice,), errors = assemble_stream(raw, "chat")
    assert choice["text"] == "a" and errors[0]["type"] == "unparsed_event" and errors[0]["raw"] == "{not json"


def test_completion_stream():
    raw = sse({"choices": [{"index": 0, "text": "令和", "finish_reason": None}]},
              {"choices": [{"index": 0, "text": "八年", "finish_reason": "length"}]}, "[DONE]")
    assert assemble_stream(raw, "completions") == ([{"index": 0, "text": "令和八年", "finish_reason": "length"}], [])


def test_non_streamed_body_with_tool_calls_and_reasoning():
    body = json.dumps({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "reasoning": "天気を調べる",
        "tool_calls": [{"id": "call_a", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"札幌"}'}}]}}]},
        ensure_ascii=False).encode()
    (choice,), errors = assemble_body(body, "chat")
    assert errors == [] and choice["text"] == "" and choice["reasoning"] == "天気を調べる"
    assert choice["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"札幌"}'}
    legacy = json.dumps({"choices": [{"index": 0, "message": {"content": "x", "reasoning_content": "r"}}]})
    assert assemble_body(legacy.encode(), "chat")[0][0]["reasoning"] == "r"


def test_non_streamed_error_body_and_garbage():
    body = b'{"error": {"message": "bad", "type": "BadRequestError", "code": 400}}'
    assert assemble_body(body, "chat") == ([], [{"message": "bad", "type": "BadRequestError", "code": 400,
                                                 "param": None}])
    assert assemble_body(b"\xff not json", "chat")[0][0]["text"] == "\\xff not json"
