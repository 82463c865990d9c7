"""--tokenizer's option parsing and the budget from a real (locally trained) tokenizer."""

from __future__ import annotations

import pytest

from loadtest.llmload import prompts
from loadtest.llmload.tokens import budget_from_tokenizer, parse_tokenizers, prompt_tokens


def test_parse_tokenizers():
    assert parse_tokenizers("") == {}
    assert parse_tokenizers("/models/a") == {"*": "/models/a"}
    assert parse_tokenizers("m1=/a, m2=/b") == {"m1": "/a", "m2": "/b"}
    with pytest.raises(ValueError, match="MODEL=PATH"):
        parse_tokenizers("m1=/a,/b")


def test_budget_counts_the_chat_template(tmp_path):
    from cluster.devmodels import JAPANESE_CORPUS, _train_tokenizer

    tokenizer = _train_tokenizer(400, JAPANESE_CORPUS)
    tokenizer.save_pretrained(tmp_path)
    budget = budget_from_tokenizer(str(tmp_path), 2048)
    system = prompts.prompt_set()["system_prompts"][0]
    templated = prompt_tokens(tokenizer, system, "あ")
    plain = len(tokenizer(system + "あ")["input_ids"])
    assert templated > plain  # the template's role markers are counted, as the engine counts them
    assert budget.overhead_tokens == templated + 32 and budget.max_model_len == 2048
    text = prompts.calibration_text()
    expected = (prompt_tokens(tokenizer, system, text) - templated) / (len(text) - 1)
    assert budget.tokens_per_char == pytest.approx(max(0.05, expected))
