"""What client developers and operators expect from the running stack: OpenAI rate-limit
headers and Retry-After, the OpenAPI document at its URL, structured access logs in Serve's log."""

from __future__ import annotations

import json
import time

import httpx
import psutil
import pytest

from serving.router.openapi import document

pytestmark = pytest.mark.integration

ASK = {"model": "tiny-llama-ja", "messages": [{"role": "user", "content": "議事録を要約してください"}],
       "max_tokens": 2}


def _call(stack, key: str) -> httpx.Response:
    return httpx.post(stack.base_url + "/v1/chat/completions", json=ASK, timeout=60,
                      headers={"Authorization": f"Bearer {key}"})


def test_rate_limit_headers_count_down_and_the_429_says_when(stack):
    key, _ = stack.new_key("ratelimit-town")  # 3 requests, 100000 tokens per minute
    if time.time() % 60 > 40:  # the three requests and the refusal in one minute window
        time.sleep(61 - time.time() % 60)
    answers = [_call(stack, key) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429], [r.text for r in answers]
    ok = [r.headers for r in answers[:3]]
    assert [h["x-ratelimit-limit-requests"] for h in ok] == ["3"] * 3
    assert [h["x-ratelimit-remaining-requests"] for h in ok] == ["2", "1", "0"]
    assert all(h["x-ratelimit-limit-tokens"] == "100000" for h in ok)
    remaining_tokens = [int(h["x-ratelimit-remaining-tokens"]) for h in ok]
    assert remaining_tokens[0] > remaining_tokens[2]  # the first answers' tokens were counted
    assert all(h["x-ratelimit-reset-requests"].endswith("s") for h in ok)
    refused = answers[3]
    assert refused.json()["error"]["code"] == "requests_per_minute_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_openapi_document_is_served_and_describes_the_model_cards(stack):
    served = httpx.get(stack.base_url + "/openapi.json", timeout=30)
    assert served.status_code == 200 and served.json() == document()
    yaml_doc = httpx.get(stack.base_url + "/openapi.yaml", timeout=30)
    assert yaml_doc.status_code == 200 and yaml_doc.headers["content-type"] == "application/yaml"
    cards = httpx.get(stack.base_url + "/v1/models", headers={"Authorization": f"Bearer {stack.api_key}"},
                      timeout=30).json()["data"]
    described = set(document()["components"]["schemas"]["ModelCard"]["properties"])
    for card in cards:
        assert set(card) <= described, set(card) - described


def _router_logs(stack) -> list[str]:
    paths = set()
    for pid in stack.replica_pids("router"):
        try:
            paths |= {f.path for f in psutil.Process(pid).open_files()
                      if "/logs/serve/" in f.path and f.path.endswith(".log")}
        except psutil.Error:
            continue
    assert paths, "no Serve log file open in the router replicas"
    return sorted(paths)


def test_access_log_is_json_with_request_fields(stack):
    answer = _call(stack, stack.api_key)
    assert answer.status_code == 200
    rid = answer.headers["x-govllm-request-id"]
    deadline = time.monotonic() + 20
    found = None
    while found is None and time.monotonic() < deadline:
        for path in _router_logs(stack):
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if rid in line:
                        found = json.loads(line)
                        break
            if found:
                break
        else:
            time.sleep(0.5)
    assert found is not None, f"request {rid} not in the router's Serve log"
    assert found["govllm_request_id"] == rid and found["status"] == 200
    assert found["tenant"] == "dev-local" and found["model"] == "tiny-llama-ja"
    assert found["deployment"].endswith("_router") and found["replica"] and found["levelname"] == "INFO"
    assert "議事録" not in json.dumps(found, ensure_ascii=False)  # never the prompt


def test_the_exact_tokenizer_counts_what_the_engine_counts(stack):
    """--tokenizer (loadtest/llmload/tokens.py) instead of calibration through the API: the
    local count of the calibration prompts equals the engine's usage.prompt_tokens."""
    from loadtest.llmload import prompts
    from loadtest.llmload.tokens import budget_from_tokenizer, prompt_tokens

    model = "tiny-llama-ja"
    path = stack.state_dir / "models" / model  # the generated development model (tokenizer files)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    system = prompts.prompt_set()["system_prompts"][0]
    for content in ("あ", prompts.calibration_text()):
        body = {"model": model, "max_tokens": 1, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": content}]}
        answer = httpx.post(stack.base_url + "/v1/chat/completions", json=body, timeout=60,
                            headers={"Authorization": f"Bearer {stack.api_key}"})
        assert answer.status_code == 200, answer.text
        assert prompt_tokens(tokenizer, system, content) == answer.json()["usage"]["prompt_tokens"]
    budget = budget_from_tokenizer(str(path), 1024)
    assert 0.05 <= budget.tokens_per_char and budget.max_model_len == 1024
