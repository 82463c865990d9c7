"""Embeddings, rerank and score through the router with the official `openai` client (and httpx
for the Cohere/Jina rerank shape the SDK lacks), billed and audited like chat."""

from __future__ import annotations

import base64
import json
import time

import httpx
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.integration

EMBED, LLAMA = "tiny-embed-ja", "tiny-llama-ja"
TEXTS = ["住民票の写しの交付申請", "災害時の避難所の開設状況", "補助金の交付要綱の改正"]


def _key(stack, tenant: str) -> str:
    return json.loads(stack.cli("keys", "create", "--tenant", tenant, "--user", "rag", "--json").stdout)["key"]


def _post(stack, path: str, body: dict, key: str | None = None, **headers) -> httpx.Response:
    return httpx.post(stack.base_url + path, json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key or stack.api_key}", **headers})


def test_models_list_kinds_and_capabilities(client):
    cards = {m.id: m.model_extra for m in client.models.list().data}
    assert cards[EMBED]["kind"] == "embedding"
    assert set(cards[EMBED]["capabilities"]) == {"embeddings", "score", "rerank"}
    assert cards[LLAMA]["kind"] == "chat" and cards[LLAMA]["tool_call_parser"] == "llama3_json"
    assert {"chat", "responses", "tools", "structured_outputs"} <= set(cards[LLAMA]["capabilities"])
    assert "embeddings" not in cards[LLAMA]["capabilities"]


def test_embeddings_shapes_batch_and_base64(client):
    one = client.embeddings.create(model=EMBED, input=TEXTS[0])
    dims = len(one.data[0].embedding)
    assert dims > 0 and one.model == EMBED and one.usage.prompt_tokens > 0
    batch = client.embeddings.create(model=EMBED, input=TEXTS)
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert all(len(d.embedding) == dims for d in batch.data)
    assert batch.usage.prompt_tokens > one.usage.prompt_tokens
    # the same text embeds to the same vector alone and in a batch (the engine pools each alone)
    assert np.allclose(batch.data[0].embedding, one.data[0].embedding, atol=1e-5)
    # base64: little-endian float32, the same vector (the SDK decodes it when it asks for it itself)
    raw = httpx.post(str(client.base_url) + "embeddings", timeout=60,
                     headers={"Authorization": f"Bearer {client.api_key}"},
                     json={"model": EMBED, "input": TEXTS[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (dims,) and np.allclose(decoded, one.data[0].embedding, atol=1e-5)
    sdk = client.embeddings.create(model=EMBED, input=TEXTS[0], encoding_format="base64")
    assert np.allclose(np.frombuffer(base64.b64decode(sdk.data[0].embedding), dtype="<f4"), decoded)


def test_embeddings_are_billed_and_audited_without_vectors(stack):
    key = _key(stack, "rag-town")
    before = json.loads(stack.cli("usage", "--tenant", "rag-town", "--json").stdout)
    secret = f"避難所 {time.time_ns()}"
    resp = _post(stack, "/v1/embeddings", {"model": EMBED, "input": [secret, TEXTS[1]]}, key,
                 **{"x-request-id": "embed-audit-1"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    after = json.loads(stack.cli("usage", "--tenant", "rag-town", "--json").stdout)
    charged = body["usage"]["prompt_tokens"]
    assert after["total_tokens"] - before["total_tokens"] == charged > 0
    assert after["models"][EMBED]["prompt_tokens"] - before.get("models", {}).get(EMBED, {}).get(
        "prompt_tokens", 0) == charged
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = {r.get("client_request_id"): r for r in stack.audit_export("rag-town")}
        if "embed-audit-1" in records:
            break
        time.sleep(2)
    rec = records["embed-audit-1"]
    assert rec["operation"] == "embeddings" and rec["model_id"] == EMBED
    assert rec["prompt"] == [secret, TEXTS[1]]
    dims = len(body["data"][0]["embedding"])
    assert rec["output"] == [{"index": 0, "dimensions": dims}, {"index": 1, "dimensions": dims}]
    # no vector component anywhere in the record
    components = {repr(v) for d in body["data"] for v in d["embedding"]}
    assert not _paths_with(rec, components)


def _paths_with(obj, needles: set[str], path: str = "") -> list[str]:
    """Where in a record any of `needles` occurs (as a number or inside a string)."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _paths_with(v, needles, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _paths_with(v, needles, f"{path}[{i}]")]
    text = repr(obj) if isinstance(obj, float) else str(obj)
    return [path] if text in needles or (isinstance(obj, str) and any(n in obj for n in needles)) else []


def test_rerank_orders_documents_and_score_agrees(stack):
    docs = ["補助金の交付要綱を改正します。", TEXTS[0], "議事録を共有してください。"]
    resp = _post(stack, "/v1/rerank", {"model": EMBED, "query": TEXTS[0], "documents": docs})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # cosine similarity: the document identical to the query ranks first, at 1
    assert results[0]["index"] == 1 and results[0]["relevance_score"] == pytest.approx(1.0, abs=1e-4)
    assert resp.json()["usage"]["total_tokens"] > 0
    top = _post(stack, "/v1/rerank", {"model": EMBED, "query": TEXTS[0], "documents": docs, "top_n": 2}).json()
    assert [r["index"] for r in top["results"]] == [r["index"] for r in results[:2]]
    score = _post(stack, "/v1/score", {"model": EMBED, "text_1": TEXTS[0], "text_2": docs})
    assert score.status_code == 200, score.text
    by_index = {d["index"]: d["score"] for d in score.json()["data"]}
    for r in results:
        assert by_index[r["index"]] == pytest.approx(r["relevance_score"], abs=1e-5)


@pytest.mark.parametrize(("path", "body", "status", "code", "param"), [
    ("/v1/embeddings", {"model": LLAMA, "input": "x"}, 400, "model_not_supported", "model"),
    ("/v1/embeddings", {"model": "default", "input": "x"}, 400, "model_not_supported", "model"),
    ("/v1/rerank", {"model": LLAMA, "query": "x", "documents": ["a"]}, 400, "model_not_supported", "model"),
    ("/v1/chat/completions", {"model": EMBED, "messages": [{"role": "user", "content": "x"}]}, 400,
     "model_not_supported", "model"),
    ("/v1/responses", {"model": EMBED, "input": "x"}, 400, "model_not_supported", "model"),
    ("/v1/embeddings", {"model": EMBED, "input": []}, 400, "invalid_value", "input"),
    ("/v1/embeddings", {"model": EMBED, "input": "x", "stream": True}, 400, "invalid_value", "stream"),
    ("/v1/embeddings", {"model": EMBED, "input": "x", "encoding_format": "hex"}, 400, "invalid_value",
     "encoding_format"),
    ("/v1/embeddings", {"model": EMBED}, 400, "missing_required_parameter", "input"),
    ("/v1/embeddings", {"model": "no-such", "input": "x"}, 404, "model_not_found", "model"),
    ("/v1/rerank", {"model": EMBED, "query": "x", "documents": []}, 400, "invalid_value", "documents"),
    ("/v1/score", {"model": EMBED, "text_1": "x"}, 400, "invalid_value", None),
])
def test_errors_have_openai_bodies(stack, path, body, status, code, param):
    resp = _post(stack, path, body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["param"] == param and err["message"]
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code == "model_not_supported":
        assert body["model"] in err["message"]


def test_engine_refusal_is_relayed_in_openai_shape(client):
    # a pooling model without Matryoshka support refuses `dimensions` itself; the router relays it
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=EMBED, input="x", dimensions=16)
    assert "dimensions" in exc.value.body["message"]
    too_long = "会議" * 600  # beyond the embedding model's 512-token context
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=EMBED, input=too_long)
    assert exc.value.status_code == 400


def test_cross_encoder_reranks_and_scores_but_does_not_embed(stack, client):
    docs = ["本日の会議の議事録", "住民票の写し", "補助金の交付"]
    ranked = _post(stack, "/v1/rerank", {"model": "tiny-rerank-ja", "query": "会議", "documents": docs})
    assert ranked.status_code == 200, ranked.text
    results = ranked.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert [r["relevance_score"] for r in results] == sorted((r["relevance_score"] for r in results),
                                                             reverse=True)
    assert ranked.json()["usage"]["prompt_tokens"] > 0
    score = _post(stack, "/v1/score", {"model": "tiny-rerank-ja", "text_1": "会議", "text_2": docs}).json()
    by_index = {d["index"]: d["score"] for d in score["data"]}
    for r in results:  # one pass over each (query, document) pair: the same number either way
        assert by_index[r["index"]] == pytest.approx(r["relevance_score"], abs=1e-5)
    cards = {m.id: m.model_extra for m in client.models.list().data}
    assert cards["tiny-rerank-ja"]["kind"] == "rerank"
    assert set(cards["tiny-rerank-ja"]["capabilities"]) == {"score", "rerank"}
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="tiny-rerank-ja", input="x")
    assert exc.value.body["code"] == "model_not_supported" and "tiny-embed-ja" in exc.value.body["message"]
