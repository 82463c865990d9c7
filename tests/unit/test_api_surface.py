"""Embeddings, rerank/score, Responses and tools in the router's parts (no server): schemas,
model kinds, token reservations, the Responses stream meter, audit assembly, spec fields."""

from __future__ import annotations

import asyncio
import json

import pytest

from cluster import devmodels
from cluster.render.serve_config import llm_config, serving_config
from cluster.spec.schema import parse_spec
from serving.audit.assemble import assemble_body, assemble_stream
from serving.audit.record import finish, raw_material
from serving.config import ModelRoute, ServingConfig
from serving.model_kinds import KINDS, OPERATION_PATHS, OPERATIONS
from serving.request import APIError, RequestContext
from serving.router.pipeline import ParseRequest, ResolveModel
from serving.router.responses_meter import ResponsesMeter, input_bytes
from serving.tenancy.reservation import reservation_for
from serving.texts import text_slots

CHAT = ModelRoute(id="chat", max_model_len=256, tool_call_parser="hermes")
EMBED = ModelRoute(id="embed", max_model_len=64, kind="embedding")
RERANK = ModelRoute(id="xenc", max_model_len=128, kind="rerank")
CONFIG = ServingConfig(models=(CHAT, EMBED, RERANK), aliases={"default": ("chat",), "mixed": ("embed", "chat")})


def ctx(operation: str, payload: dict) -> RequestContext:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return RequestContext(request_id="r", operation=operation, scope={"headers": []}, raw_body=body)


def resolve(operation: str, payload: dict) -> RequestContext:
    c = ctx(operation, payload)
    asyncio.run(ParseRequest()(c))
    asyncio.run(ResolveModel(CONFIG)(c))
    return c


# -- kinds ---------------------------------------------------------------------------------------
def test_every_operation_has_a_path_and_a_kind():
    assert set(OPERATION_PATHS) == set().union(*OPERATIONS.values())
    assert set(OPERATIONS) == set(KINDS)


@pytest.mark.parametrize(("operation", "payload", "expected"), [
    ("embeddings", {"model": "embed", "input": "x"}, ("embed",)),
    ("rerank", {"model": "xenc", "query": "q", "documents": ["a"]}, ("xenc",)),
    ("rerank", {"model": "embed", "query": "q", "documents": ["a"]}, ("embed",)),
    ("score", {"model": "xenc", "text_1": "q", "text_2": ["a", "b"]}, ("xenc",)),
    ("responses", {"model": "default", "input": "x"}, ("chat",)),
    ("embeddings", {"model": "mixed", "input": "x"}, ("embed",)),  # an alias keeps what serves it
    ("chat", {"model": "mixed", "messages": [{"role": "user", "content": "x"}]}, ("chat",)),
])
def test_models_of_the_right_kind_are_candidates(operation, payload, expected):
    assert tuple(m.id for m in resolve(operation, payload).candidates) == expected


@pytest.mark.parametrize(("operation", "payload", "named"), [
    ("embeddings", {"model": "chat", "input": "x"}, "embed"),
    ("embeddings", {"model": "xenc", "input": "x"}, "embed"),
    ("chat", {"model": "embed", "messages": [{"role": "user", "content": "x"}]}, "chat"),
    ("responses", {"model": "xenc", "input": "x"}, "chat"),
    ("rerank", {"model": "default", "query": "q", "documents": ["a"]}, "embed, xenc"),
])
def test_wrong_kind_is_a_400_naming_the_models_that_serve_it(operation, payload, named):
    with pytest.raises(APIError) as exc:
        resolve(operation, payload)
    err = exc.value
    assert err.status == 400 and err.code == "model_not_supported" and err.param == "model"
    assert OPERATION_PATHS[operation] in err.message and named in err.message


# -- schemas -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("operation", "payload", "param"), [
    ("embeddings", {"model": "embed", "input": ""}, "input"),
    ("embeddings", {"model": "embed", "input": []}, "input"),
    ("embeddings", {"model": "embed", "input": "x", "dimensions": 0}, "dimensions"),
    ("embeddings", {"model": "embed", "input": "x", "stream": True}, "stream"),
    ("rerank", {"model": "embed", "query": "q", "documents": []}, "documents"),
    ("rerank", {"model": "embed", "query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
    ("score", {"model": "embed", "text_1": "q"}, None),
    ("score", {"model": "embed", "text_1": "q", "text_2": []}, None),
    ("responses", {"model": "chat", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ("responses", {"model": "chat", "input": "x", "background": True}, "background"),
    ("responses", {"model": "chat", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ("responses", {"model": "chat", "input": "x", "stream": "yes"}, "stream"),
])
def test_bad_requests_are_400s_naming_the_field(operation, payload, param):
    with pytest.raises(APIError) as exc:
        asyncio.run(ParseRequest()(ctx(operation, payload)))
    assert exc.value.status == 400 and exc.value.param == param
    assert exc.value.message.startswith("Invalid value for" if param else "Invalid request")


def test_responses_stream_and_extensions_pass():
    c = ctx("responses", {"model": "chat", "input": [{"role": "user", "content": "x"}], "stream": True,
                          "store": False, "reasoning": {"effort": "low"}})
    asyncio.run(ParseRequest()(c))
    assert c.stream and c.payload["reasoning"] == {"effort": "low"}


# -- reservations never below what the engine can bill ------------------------------------------
def test_embedding_reservation_bounds_every_input_by_bytes_and_context():
    c = resolve("embeddings", {"model": "embed", "input": ["会議", "a" * 500]})
    assert reservation_for(c) == (6 + 4) + 64  # bytes + specials; capped at the context
    ids = resolve("embeddings", {"model": "embed", "input": [[1, 2, 3], [4] * 99]})
    assert reservation_for(ids) == 3 + 64  # token ids count as themselves


def test_rerank_and_score_reservations_cover_pairs_and_queries():
    c = resolve("rerank", {"model": "embed", "query": "abc", "documents": ["de", "f" * 200]})
    q = 3 + 4
    assert reservation_for(c) == (q + 6) + (q + 64) + q
    s = resolve("score", {"model": "xenc", "text_1": ["ab", "cd"], "text_2": ["x", "y"]})
    assert reservation_for(s) == 2 * (6 + 5) + 2 * 6


def test_responses_reservation_is_body_plus_output_within_context():
    payload = {"model": "chat", "input": "要約して", "max_output_tokens": 10}
    c = resolve("responses", payload)
    assert reservation_for(c) == len(c.raw_body) + 10
    image = resolve("responses", {"model": "chat", "max_output_tokens": 10, "input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]})
    assert reservation_for(image) == 256  # a part the body does not show: the whole context


# -- the PII guard and the audit trail see every input -------------------------------------------
def test_text_slots_cover_every_input_field():
    payload = {"query": "q", "documents": ["a", "b"], "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "t"}]}, {"type": "function_call_output", "output": "o"}],
        "instructions": "i", "text_1": "x", "text_2": ["y"]}
    assert sorted(c[k] for c, k in text_slots("rerank", payload)) == ["a", "b", "q"]
    assert sorted(c[k] for c, k in text_slots("responses", payload)) == ["i", "o", "t"]
    assert sorted(c[k] for c, k in text_slots("score", payload)) == ["a", "b", "x", "y"]
    assert [c[k] for c, k in text_slots("embeddings", {"input": ["u", 3, "v"]})] == ["u", "v"]


def test_embedding_audit_record_keeps_input_not_vectors():
    body = json.dumps({"data": [{"index": 0, "object": "embedding", "embedding": [0.123456, -0.5]},
                                {"index": 1, "object": "embedding", "embedding": "AAAAAAAAAAA="}],
                       "usage": {"prompt_tokens": 3, "total_tokens": 3}}).encode()
    record = {"operation": "embeddings", "_payload": {"model": "e", "input": ["住民票", "x"], "dimensions": 2},
              "_response": ((), body), "_raw_body": b"{}"}
    assert "response_b64" not in raw_material(record)
    done = finish(dict(record))
    assert done["prompt"] == ["住民票", "x"] and done["parameters"] == {"model": "e", "dimensions": 2}
    assert done["output"] == [{"index": 0, "dimensions": 2}, {"index": 1, "dimensions": 2}]
    assert "0.123456" not in json.dumps(done)


def test_rerank_and_responses_answers_are_assembled():
    rerank = json.dumps({"results": [{"index": 1, "relevance_score": 0.9, "document": {"text": "d"}}]}).encode()
    assert assemble_body(rerank, "rerank") == ([{"index": 1, "relevance_score": 0.9}], [])
    output = [{"type": "message", "content": [{"type": "output_text", "text": "答え"}]},
              {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"}]
    assert assemble_body(json.dumps({"output": output}).encode(), "responses") == (output, [])
    stream = (b'event: response.created\ndata: {"type":"response.created","response":{}}\n\n'
              b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"\xe7\xad\x94"}\n\n')
    assert assemble_stream(stream, "responses") == ([{"type": "partial", "text": "答"}], [])
    done = stream + (b'event: response.completed\ndata: ' + json.dumps(
        {"type": "response.completed", "response": {"output": output}}).encode() + b"\n\n")
    assert assemble_stream(done, "responses") == (output, [])


# -- the Responses stream meter ------------------------------------------------------------------
def _event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def test_responses_meter_bills_the_terminal_usage_or_estimates_a_cut_stream():
    meter = ResponsesMeter(input_estimate=40)
    block = _event("response.created", {"response": {}}) + _event("response.output_text.delta", {"delta": "a"})
    out, seen = meter.scan(block)
    assert out == block  # nothing removed: Responses streams carry no per-chunk usage
    meter.commit(seen)
    assert not meter.complete and meter.delivered() == {"prompt_tokens": 40, "completion_tokens": 1,
                                                         "total_tokens": 41}
    assert meter.estimated
    _, seen = meter.scan(_event("response.completed", {"response": {"usage": {
        "input_tokens": 7, "output_tokens": 3, "total_tokens": 10}}}))
    meter.commit(seen)
    assert meter.complete and meter.delivered() == {"prompt_tokens": 7, "completion_tokens": 3,
                                                    "total_tokens": 10}
    assert not meter.estimated
    failed = ResponsesMeter(input_estimate=1)
    failed.scan(b'event: error\ndata: {"type":"error","message":"boom"}\n\n')
    assert failed.error["code"] == "engine_failed" and "boom" in failed.error["message"]
    assert input_bytes({"input": "会議", "instructions": "ab"}) == 8


# -- spec -> engine arguments and router settings -----------------------------------------------
BASE = {"name": "t", "engine": {"device": "cpu"}, "store": {"embedded": True}, "auth": {"enabled": False},
        "models": [{"id": "m", "source": {"dev_model": {"family": "llama"}}, "max_model_len": 128}]}


def _spec(**model):
    data = json.loads(json.dumps(BASE))
    data["models"][0].update(model)
    return parse_spec(data)


def test_kinds_parsers_and_guided_decoding_render_into_engine_arguments(tmp_path):
    spec = _spec(tool_call_parser="llama3_json", reasoning_parser="deepseek_r1", chat_template="t.jinja",
                 structured_outputs={"backend": "xgrammar", "disable_any_whitespace": True})
    kwargs = llm_config(spec, spec.models[0], tmp_path)["engine_kwargs"]
    assert kwargs["enable_auto_tool_choice"] is True and kwargs["tool_call_parser"] == "llama3_json"
    assert kwargs["reasoning_parser"] == "deepseek_r1"
    assert kwargs["chat_template"] == str(tmp_path / "t.jinja")
    assert kwargs["structured_outputs_config"]["disable_any_whitespace"] is True
    route = serving_config(spec).models[0]
    assert route.kind == "chat" and route.tool_call_parser == "llama3_json"
    assert {"tools", "reasoning", "responses"} <= set(route.capabilities)
    embed = _spec(kind="embedding")
    kwargs = llm_config(embed, embed.models[0], tmp_path)["engine_kwargs"]
    assert kwargs["runner"] == "pooling" and kwargs["convert"] == "embed"
    assert "tool_call_parser" not in kwargs  # a dev embedding model gets no chat defaults
    assert serving_config(embed).models[0].capabilities == ["embeddings", "score", "rerank"]


def test_dev_chat_models_default_to_their_templates_parser():
    assert _spec().models[0].tool_call_parser == devmodels.TOOL_FORMATS["llama"][0]
    assert _spec(tool_call_parser=None).models[0].tool_call_parser is None  # an explicit "none"


@pytest.mark.parametrize(("fields", "message"), [
    ({"tool_call_parser": "llama3"}, "unknown tool_call_parser 'llama3'"),
    ({"reasoning_parser": "qwen"}, "unknown reasoning_parser 'qwen'"),
    ({"structured_outputs": {"disable_any_whitespace": True}}, "needs backend xgrammar or guidance"),
    ({"structured_outputs": {"backend": "xgrammar", "disable_additional_properties": True}}, "needs backend guidance"),
    ({"kind": "embedding", "tool_call_parser": "hermes"}, "apply to chat models"),
    ({"engine_kwargs": {"runner": "pooling"}}, "models[].kind"),
    ({"engine_kwargs": {"tool_call_parser": "hermes"}}, "models[].tool_call_parser"),
    ({"kind": "vectors"}, "kind"),
])
def test_spec_refuses_what_vllm_would_refuse_at_start(fields, message):
    with pytest.raises(Exception) as exc:
        _spec(**fields)
    assert message in str(exc.value)


def test_dev_templates_render_tools_calls_and_results_in_their_parsers_format():
    tok = devmodels._train_tokenizer(512, devmodels.JAPANESE_CORPUS, devmodels.HERMES_TEMPLATE)
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c", "content": "晴れ"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert '<tools>\n{"type": "function"' in text
    assert '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>' in text
    assert "<tool_response>\n晴れ\n</tool_response>" in text
    for marker in devmodels.TOOL_TOKENS:
        assert len(tok.tokenize(marker)) == 1
    plain = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert plain == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"  # unchanged without tools
    llama = devmodels._train_tokenizer(512, devmodels.JAPANESE_CORPUS, devmodels.LLAMA3_JSON_TEMPLATE)
    text = llama.apply_chat_template(messages, tools=tools, tokenize=False)
    assert '<|python_tag|>{"name": "f", "parameters": {"a": 1}}' in text and "<|im_start|>ipython" in text


# -- sizing: embedding models need no KV cache for long answers ---------------------------------
def test_planner_sizes_pooling_models_by_input_tokens():
    from cluster.catalog.cards import gpu_catalog, model_catalog
    from cluster.sizing.planner import SizingRequest, plan

    card = model_catalog().get("llama-3.1-8b")
    base = {"model": "e", "shape": card.architecture.resolve(), "params": int(card.params_billion * 1e9),
            "gpu": gpu_catalog().get("h100-80gb"), "max_model_len": 8192, "typical_sequence_tokens": 512}
    chat, pooling = plan(SizingRequest(**base), alternatives=False), plan(
        SizingRequest(**base, pooling=True), alternatives=False)
    assert chat.fits and pooling.fits
    assert any("pooling model" in n for n in pooling.notes) and not any("pooling" in n for n in chat.notes)
    # one step embeds max_num_batched_tokens of inputs: that, not the KV cache, bounds concurrency
    assert pooling.target_ongoing_requests <= max(1, pooling.max_num_batched_tokens // 512)
    assert pooling.target_ongoing_requests <= chat.target_ongoing_requests



def test_json_schema_tool_calls_are_an_engine_environment_setting(tmp_path):
    spec = _spec(structured_outputs={"backend": "guidance", "structural_tag_tool_calls": False})
    config = llm_config(spec, spec.models[0], tmp_path)
    assert config["runtime_env"]["env_vars"]["VLLM_ENFORCE_STRICT_TOOL_CALLING"] == "0"
    assert "structural_tag_tool_calls" not in config["engine_kwargs"]["structured_outputs_config"]
    default = _spec(structured_outputs={"backend": "guidance"})
    assert "VLLM_ENFORCE_STRICT_TOOL_CALLING" not in llm_config(default, default.models[0], tmp_path)[
        "runtime_env"]["env_vars"]


def test_dev_reranker_is_a_one_label_sequence_classifier(tmp_path):
    path = devmodels.generate(tmp_path / "rerank", devmodels.DevModelShape(family="qwen2", head="classify",
                                                                          seed=2))
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and len(config["id2label"]) == 1
    assert not devmodels.is_current(path, devmodels.DevModelShape(family="qwen2", seed=2))  # the head counts
    with pytest.raises(Exception, match="development reranker"):
        _spec(kind="rerank", source={"dev_model": {"family": "cohere"}})
