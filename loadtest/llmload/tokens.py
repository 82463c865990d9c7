"""Prompt lengths from the model's own tokenizer, instead of calibration through the API.

By default the locustfile measures each model's tokens per character with two tiny requests
and reads `usage.prompt_tokens` (loadtest/locustfile.py `_calibrate`). With `--tokenizer`
the same two prompts are counted locally with the model's tokenizer and chat template
(transformers, local files only: no hub access), which is what vLLM counts too, so the
budget is exact for those prompts, costs no requests (they would otherwise appear in the
run's statistics) and works before the target accepts load.
"""

from __future__ import annotations

from loadtest.llmload import prompts
from loadtest.llmload.prompts import TokenBudget


def parse_tokenizers(value: str) -> dict[str, str]:
    """`PATH` (every model) or `MODEL=PATH[,MODEL=PATH...]` -> {model or "*": path}."""
    value = value.strip()
    if not value:
        return {}
    if "=" not in value:
        return {"*": value}
    out = {}
    for part in value.split(","):
        model, sep, path = part.strip().partition("=")
        if not sep or not model or not path:
            raise ValueError(f"--tokenizer: expected PATH or MODEL=PATH,..., got {part!r}")
        out[model.strip()] = path.strip()
    return out


def prompt_tokens(tokenizer, system_prompt: str, content: str) -> int:
    """Tokens of a system + user chat prompt as the engine counts it (template included)."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": content}]
    if getattr(tokenizer, "chat_template", None):
        # as vLLM does for chat: render the template, then tokenize without adding specials
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return len(tokenizer(system_prompt + "\n" + content)["input_ids"])


def budget_from_tokenizer(path: str, max_model_len: int | None) -> TokenBudget:
    """The TokenBudget the API calibration would find, counted with the tokenizer at `path`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    system = prompts.prompt_set()["system_prompts"][0]
    text = prompts.calibration_text()
    base, full = prompt_tokens(tokenizer, system, "あ"), prompt_tokens(tokenizer, system, text)
    per_char = max(0.05, (full - base) / max(1, len(text) - 1))
    return TokenBudget(tokens_per_char=per_char, overhead_tokens=base + 32, max_model_len=max_model_len)
