"""The personal-information guard on the running stack: refuse, mask, route, and streamed answers.

The development models have random weights, so they never write an identifier on
their own. The streamed-answer test makes the real engine write one with vLLM's
structured outputs (a regular expression the sampler must follow): the engine
then emits the number a token at a time, over several SSE chunks, exactly as a
model quoting it would. A tenant without a policy sees the raw chunks (the test
checks the number really was split); the masking tenant must see only the
placeholder.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
MY_NUMBER = "1234-5678-9018"  # a check-digit-valid Individual Number (the formula's worked example)
PROMPT = f"申請者の個人番号は{MY_NUMBER}です。申請内容を要約してください。"


def _key(stack, tenant: str) -> str:
    return stack.new_key(tenant, "pii-test")[0]


def _chat(stack, key: str, content: str, *, model: str = "tiny-llama-ja", rid: str | None = None,
          **extra) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **({"x-request-id": rid} if rid else {})}
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 3, **extra}
    return httpx.post(stack.base_url + CHAT, json=body, headers=headers, timeout=120)


def _records(stack, tenant: str, rids: set[str], timeout: float = 60) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = {r.get("client_request_id"): r for r in stack.audit_export(tenant)}
        if rids <= set(records):
            return records
        time.sleep(2)
    raise AssertionError(f"audit records {rids} not archived after {timeout}s")


def test_refuse_names_the_type_never_the_value(stack):
    resp = _chat(stack, _key(stack, "pii-refuse"), PROMPT, rid="pii-refuse-1")
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "pii_refused" and error["type"] == "invalid_request_error"
    assert "個人番号 (JP_MY_NUMBER) x1" in error["message"] and "5678" not in resp.text
    rec = _records(stack, "pii-refuse", {"pii-refuse-1"})["pii-refuse-1"]
    assert rec["status"] == 400 and rec["pii"]["decision"] == "refuse"
    assert rec["pii"]["types"] == {"JP_MY_NUMBER": 1}


def test_mask_sends_the_engine_the_placeholder(stack):
    resp = _chat(stack, _key(stack, "pii-mask"), PROMPT + " 連絡先 090-1234-5678", rid="pii-mask-1")
    assert resp.status_code == 200, resp.text
    rec = _records(stack, "pii-mask", {"pii-mask-1"})["pii-mask-1"]
    sent = rec["prompt"][0]["content"]  # what the router forwarded to the engine
    assert sent == "申請者の個人番号は[個人番号]です。申請内容を要約してください。 連絡先 [電話番号]"
    assert rec["pii"]["decision"] == "mask"
    assert rec["pii"]["types"] == {"JP_MY_NUMBER": 1, "JP_PHONE_NUMBER": 1}


def test_route_sends_it_only_to_a_model_cleared_for_level_2(stack):
    key = _key(stack, "pii-route")
    routed = _chat(stack, key, PROMPT, model="default", rid="pii-route-1")
    assert routed.status_code == 200 and routed.headers["x-govllm-model"] == "tiny-llama-ja"
    refused = _chat(stack, key, PROMPT, model="tiny-qwen2-ja")  # approved up to level 1 only
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "model_not_approved_for_confidentiality"
    assert "5678" not in refused.text
    clean = _chat(stack, key, "申請内容を要約してください。", model="tiny-qwen2-ja")
    assert clean.status_code == 200
    rec = _records(stack, "pii-route", {"pii-route-1"})["pii-route-1"]
    assert rec["confidentiality"] == 2 and rec["pii"]["decision"] == "route"
    assert rec["candidates"] == ["tiny-llama-ja"]


def _stream(stack, key: str, answer_regex: str, prompt: str = "申請者の番号を書いてください。") -> list[str]:
    """The content of each SSE chunk of a streamed answer the engine must write as `answer_regex`."""
    body = {"model": "tiny-llama-ja", "stream": True, "max_tokens": 48,
            "messages": [{"role": "user", "content": prompt}],
            "structured_outputs": {"regex": answer_regex}}
    with httpx.stream("POST", stack.base_url + CHAT, json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status_code == 200, resp.read()
        return [json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in resp.iter_lines() if line.startswith("data: {") and '"choices":[{' in line]


def test_streamed_identifier_split_across_chunks_is_masked(stack):
    answer = "番号は123456789018、電話は090-1234-5678です。"
    raw = _stream(stack, stack.api_key, answer.replace(".", r"\."))  # dev-local: no policy
    assert "".join(raw) == answer
    carrying = [c for c in raw if any(ch.isdigit() for ch in c)]
    assert len(carrying) >= 4, raw  # the numbers really arrived split over several chunks
    masked = _stream(stack, _key(stack, "pii-mask"), answer)
    assert "".join(masked) == "番号は[個人番号]、電話は[電話番号]です。", masked
    assert not any(ch.isdigit() for ch in "".join(masked))


def test_restore_gives_back_this_requests_original_in_a_streamed_answer(stack):
    """The engine sees [個人番号_1]; its (forced) answer quotes the placeholder, split over chunks;
    the client gets its own number back, and the audit record shows the engine never had it."""
    key = _key(stack, "pii-restore")
    prompt = f"申請者の個人番号は{MY_NUMBER}です。"
    chunks = _stream(stack, key, r"\[個人番号_1\]の方の申請を受け付けました。", prompt=prompt)
    assert "".join(chunks) == f"{MY_NUMBER}の方の申請を受け付けました。", chunks
    other = _stream(stack, key, r"\[個人番号_1\]です。")  # another request: nothing to restore
    assert "".join(other) == "[個人番号_1]です。"
