"""Tool calling, structured outputs and the Responses API through the router (official client).

The development models have random weights, so what they would choose is noise; what is
tested is what the engine guarantees whatever the weights: tool_choice required/named and
response_format json_schema are enforced by guided decoding, so every call names a given
tool and every argument object validates against its schema, streamed or not.
"""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pytest

pytestmark = pytest.mark.integration

MODELS = ["tiny-llama-ja", "tiny-qwen2-ja"]
PARAMS = {"type": "object", "additionalProperties": False, "required": ["city", "urgent"],
          "properties": {"city": {"type": "string", "enum": ["東京", "大阪", "札幌"]},
                         "urgent": {"type": "boolean"}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "天気を調べる",
                                      "parameters": PARAMS}},
    {"type": "function", "function": {"name": "open_ticket", "description": "窓口の受付票",
                                      "parameters": {"type": "object", "additionalProperties": False,
                                                     "required": ["desk"],
                                                     "properties": {"desk": {"type": "string",
                                                                             "enum": ["住民課", "税務課"]}}}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "東京の天気を調べてください"}]


def _valid_call(name: str, arguments: str) -> None:
    assert name in SCHEMAS, name
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize("model", MODELS)
def test_required_tool_call_is_valid(client, model):
    resp = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                          parallel_tool_calls=False, max_tokens=64, temperature=0)
    calls = resp.choices[0].message.tool_calls
    assert calls and len(calls) == 1
    _valid_call(calls[0].function.name, calls[0].function.arguments)
    assert calls[0].id


@pytest.mark.parametrize("model", MODELS)
def test_named_tool_call_streamed_deltas_reassemble(client, model):
    stream = client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, stream=True, max_tokens=64, temperature=0,
        tool_choice={"type": "function", "function": {"name": "open_ticket"}})
    calls: dict[int, dict] = {}
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            call = calls.setdefault(delta.index, {"name": None, "arguments": ""})
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    assert list(calls) == [0]
    assert calls[0]["name"] == "open_ticket"
    _valid_call("open_ticket", calls[0]["arguments"])


@pytest.mark.parametrize("model", MODELS)
def test_required_streamed_with_parallel_calls(client, model):
    stream = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                            stream=True, max_tokens=96, temperature=0,
                                            stream_options={"include_usage": True})
    calls: dict[int, dict] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for delta in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
            call = calls.setdefault(delta.index, {"name": None, "arguments": ""})
            call["name"] = (delta.function.name if delta.function and delta.function.name else call["name"])
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    if usage.completion_tokens < 96:  # the array closed before max_tokens: every call is whole
        assert calls
        for call in calls.values():
            _valid_call(call["name"], call["arguments"])
    assert usage.prompt_tokens > 0


def test_auto_tool_choice_is_served_by_the_parser(client):
    # a parser is configured (llama3_json): auto is accepted; random weights rarely call a tool
    resp = client.chat.completions.create(model="tiny-llama-ja", messages=ASK, tools=TOOLS,
                                          tool_choice="auto", max_tokens=8)
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tool_calls_are_on_the_audit_trail(stack):
    key = json.loads(stack.cli("keys", "create", "--tenant", "rag-town", "--user", "agent", "--json").stdout)["key"]
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)
    resp = client.chat.completions.create(model="tiny-qwen2-ja", messages=ASK, tools=TOOLS,
                                          tool_choice="required", parallel_tool_calls=False, max_tokens=64,
                                          extra_headers={"x-request-id": "tools-audit-1"})
    call = resp.choices[0].message.tool_calls[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = {r.get("client_request_id"): r for r in stack.audit_export("rag-town")}
        if "tools-audit-1" in records:
            break
        time.sleep(2)
    recorded = records["tools-audit-1"]["output"][0]["tool_calls"][0]
    assert recorded["function"] == {"name": call.function.name, "arguments": call.function.arguments}
    assert records["tools-audit-1"]["parameters"]["tools"] == TOOLS


@pytest.mark.parametrize("model", MODELS)
def test_json_schema_output_is_valid(client, model):
    schema = {"type": "object", "additionalProperties": False, "required": ["ok", "level", "desk"],
              "properties": {"ok": {"type": "boolean"}, "level": {"type": "string", "enum": ["低", "中", "高"]},
                             "desk": {"type": "string", "enum": ["住民課", "税務課"]}}}
    resp = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "判定をJSONで"}], max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}})
    assert resp.choices[0].finish_reason == "stop"  # compact JSON ends (no whitespace runs to max_tokens)
    jsonschema.validate(json.loads(resp.choices[0].message.content), schema)


def test_responses_api_streams_and_bills(stack):
    key = json.loads(stack.cli("keys", "create", "--tenant", "rag-town", "--user", "resp", "--json").stdout)["key"]
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)
    before = json.loads(stack.cli("usage", "--tenant", "rag-town", "--json").stdout)["total_tokens"]
    text, completed, kinds = [], None, []
    # sampled (greedy decoding of these random weights ends at once for this prompt)
    with client.responses.stream(model="tiny-llama-ja", input="会議の要約をお願いします",
                                 max_output_tokens=12) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text.append(event.delta)
        completed = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert completed.output_text == "".join(text)
    assert 0 < completed.usage.output_tokens <= 12 and completed.usage.input_tokens > 0
    whole = client.responses.create(model="tiny-llama-ja", input="会議の要約をお願いします",
                                    max_output_tokens=12)
    assert whole.usage.output_tokens <= 12 and whole.output_text is not None
    after = json.loads(stack.cli("usage", "--tenant", "rag-town", "--json").stdout)["total_tokens"]
    assert after - before == completed.usage.total_tokens + whole.usage.total_tokens


def test_responses_api_refusals(client, stack):
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="tiny-llama-ja", input="x", previous_response_id="resp_123")
    assert exc.value.body["param"] == "previous_response_id" and "no responses" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="tiny-llama-ja", input="x", max_output_tokens=0)
    assert exc.value.body["param"] == "max_output_tokens"
    plain = httpx.post(stack.base_url + "/v1/responses", json={"model": "tiny-llama-ja"}, timeout=30,
                       headers={"Authorization": f"Bearer {stack.api_key}"})
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "missing_required_parameter"
