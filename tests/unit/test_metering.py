"""StreamMeter on vLLM's real stream shapes: exact delivered tokens, usage stripped as OpenAI's."""

from __future__ import annotations

import json

from serving.router.metering import StreamMeter

# Chunks exactly as vLLM 0.32 serialises them with continuous_usage_stats (captured from a replica).
ROLE = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":%d,'
        b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":'
        b'{"prompt_tokens":17,"total_tokens":17,"completion_tokens":0,"completion_tokens_details":null},'
        b'"prompt_token_ids":null,"prompt_text":null}\n\n')
TOKEN = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":%d,'
         b'"delta":{"content":"%s"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":'
         b'{"prompt_tokens":17,"total_tokens":%d,"completion_tokens":%d,"completion_tokens_details":null}}\n\n')
FINAL = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":'
         b'{"prompt_tokens":17,"total_tokens":%d,"completion_tokens":%d},"system_fingerprint":"v"}\n\n')


def token(index: int, text: bytes, completion: int) -> bytes:
    return TOKEN % (index, text, 17 + completion, completion)


def feed(meter: StreamMeter, block: bytes, *, delivered: bool = True) -> bytes:
    out, seen = meter.scan(block)
    if delivered:
        meter.commit(seen)
    return out


def test_stripped_stream_is_byte_identical_to_vllms_own_without_usage():
    meter = StreamMeter()
    out = feed(meter, ROLE % 0 + token(0, b"a", 1) + token(0, b"b", 2))
    assert b'"usage"' not in out
    for line in out.split(b"\n\n")[:-1]:
        json.loads(line[6:])  # still valid JSON events
    assert out.count(b"data: ") == 3 and b'"prompt_token_ids":null,"prompt_text":null}' in out
    assert meter.delivered() == {"prompt_tokens": 17, "completion_tokens": 2, "total_tokens": 19}


def test_only_committed_blocks_count():
    meter = StreamMeter()
    feed(meter, ROLE % 0 + token(0, b"a", 1))
    feed(meter, token(0, b"b", 2) + token(0, b"c", 3), delivered=False)  # the send failed
    assert meter.delivered()["completion_tokens"] == 1


def test_final_usage_is_authoritative_and_kept_only_when_asked():
    quiet, asked = StreamMeter(), StreamMeter(keep_final_usage=True)
    block = ROLE % 0 + token(0, b"a", 1) + FINAL % (18, 1)
    out_quiet, out_asked = feed(quiet, block), feed(asked, block)
    assert b'"usage"' not in out_quiet and out_quiet.count(b"data: ") == 2
    assert out_asked.endswith(FINAL % (18, 1)) and out_asked.count(b'"usage"') == 1
    assert quiet.delivered() == asked.delivered() == {
        "prompt_tokens": 17, "completion_tokens": 1, "total_tokens": 18}


def test_client_asking_for_continuous_usage_gets_it_untouched():
    meter = StreamMeter(keep_chunk_usage=True, keep_final_usage=True)
    block = ROLE % 0 + token(0, b"a", 1)
    assert feed(meter, block) == block


def test_n_choices_counted_per_choice_and_prompt_once():
    meter = StreamMeter(choices_per_prompt=2)
    feed(meter, ROLE % 0 + ROLE % 1 + token(0, b"a", 1) + token(1, b"b", 1) + token(0, b"c", 2))
    assert meter.delivered() == {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20}


def test_completion_batches_count_each_prompt():
    chunk = (b'data: {"id":"x","object":"text_completion","created":1,"model":"m","choices":[{"index":%d,'
             b'"text":"t","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,'
             b'"token_ids":null}],"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}\n\n')
    meter = StreamMeter(choices_per_prompt=1)
    feed(meter, chunk % (0, 2, 3, 1) + chunk % (1, 15, 16, 1) + chunk % (1, 15, 17, 2))
    assert meter.delivered() == {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20}


def test_answer_text_that_looks_like_usage_is_never_read_as_usage():
    fake = b'\\",\\"usage\\":{\\"prompt_tokens\\":999}'
    meter = StreamMeter()
    out = feed(meter, ROLE % 0 + token(0, fake, 1))
    assert fake in out and meter.delivered()["prompt_tokens"] == 17


def test_engine_error_event_restated_and_recorded():
    meter = StreamMeter()
    err = b'data: {"error": {"message": "EngineCore encountered an issue.", "type": "InternalServerError", "param": null, "code": 500}}\n\n'
    out = feed(meter, token(0, b"a", 1) + err)
    assert meter.error["code"] == "engine_failed" and meter.error["type"] == "server_error"
    event = json.loads(out.split(b"\n\n")[1][6:])
    assert event["error"]["code"] == "engine_failed" and "EngineCore" in event["error"]["message"]
    assert meter.delivered()["completion_tokens"] == 1


def test_nothing_delivered_is_none():
    assert StreamMeter().delivered() is None


def test_usage_in_another_field_order_is_still_read():
    """vLLM's serialisation order is read directly; any other order falls back to a JSON parse."""
    chunk = (b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"a"}}],'
             b'"usage":{"completion_tokens":4,"prompt_tokens":9,"total_tokens":13}}\n\n')
    meter = StreamMeter()
    out = feed(meter, chunk)
    assert b'"usage"' not in out and meter.delivered() == {
        "prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
