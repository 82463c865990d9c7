"""The Japanese prompt set and length-controlled prompt builders.

Load tests need inputs of a known size: a document task is only a 6k-token task if the
model's tokenizer sees 6k tokens. Characters are what we can control, tokens are what the
engine counts, and the ratio differs per tokenizer (a Japanese-trained 30B model and the
byte-level development models differ by a factor of two or more). `TokenBudget` holds a
measured ratio (the locustfile calibrates it per model from `usage.prompt_tokens`) and the
model's context limit, and turns a token target into a character count that fits.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PROMPT_SET_PATH = Path(__file__).with_name("data") / "prompts_ja.yaml"
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")


@cache
def prompt_set(path: Path = PROMPT_SET_PATH) -> dict[str, Any]:
    """The parsed prompt set (cached: every user of a process shares one copy)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError(f"{path}: not a version 1 prompt set")
    return data


def fill(text: str, rng: random.Random, *, counter: list[int] | None = None,
         fixed: dict[str, str] | None = None) -> str:
    """Replace each {name} with a random placeholder value; {n} counts up (article numbers).

    `fixed` pins some names for a whole document (its topic and issuing body stay the same).
    """
    values = prompt_set()["placeholders"]

    def one(match: re.Match) -> str:
        name = match.group(1)
        if fixed and name in fixed:
            return fixed[name]
        if name == "n":
            if counter is None:
                return str(rng.randint(1, 30))
            counter[0] += 1
            return str(counter[0])
        return str(rng.choice(values[name]))

    return _PLACEHOLDER.sub(one, text)


@dataclass
class TokenBudget:
    """How many characters make how many tokens for one model, and how many fit.

    `tokens_per_char` and `overhead_tokens` (chat template and instruction) come from
    calibration; `max_model_len` from /v1/models (None: the server did not say).
    """

    tokens_per_char: float = 1.0
    overhead_tokens: int = 64
    max_model_len: int | None = None
    safety: float = 0.9

    def input_token_limit(self, max_tokens: int) -> int | None:
        """The largest input (in tokens, instruction included) that leaves room for the output."""
        if self.max_model_len is None:
            return None
        return max(16, int((self.max_model_len - max_tokens) * self.safety))

    def chars_for(self, target_tokens: int, max_tokens: int) -> tuple[int, bool]:
        """Characters of body text for `target_tokens` of input; True when the context clamped it."""
        target = target_tokens
        clamped = False
        limit = self.input_token_limit(max_tokens)
        if limit is not None and target > limit:
            target, clamped = limit, True
        body_tokens = max(8, target - self.overhead_tokens)
        return max(8, int(body_tokens / max(self.tokens_per_char, 1e-3))), clamped


def _compose(paragraphs: list[str], target_chars: int, rng: random.Random,
             fixed: dict[str, str] | None = None) -> str:
    """Paragraphs in order (cycling) until `target_chars`, the last cut at a sentence end."""
    out: list[str] = []
    size = 0
    counter = [0]
    i = 0
    while size < target_chars:
        text = fill(paragraphs[i % len(paragraphs)], rng, counter=counter, fixed=fixed)
        room = target_chars - size
        if len(text) > room:
            cut = text.rfind("。", 0, room)
            text = text[: cut + 1] if cut > 0 else text[:room]
        out.append(text)
        size += len(text) + 1
        i += 1
    return "\n".join(out)


def document(rng: random.Random, target_chars: int) -> tuple[str, str]:
    """(kind, text): a notice, minutes, regulation or report of about `target_chars` characters."""
    kinds = prompt_set()["document"]["kinds"]
    kind = rng.choice(sorted(kinds))
    spec = kinds[kind]
    values = prompt_set()["placeholders"]
    fixed = {name: str(rng.choice(values[name])) for name in ("topic", "org")}
    title = fill(spec["title"], rng, fixed=fixed)
    body = _compose(spec["paragraphs"], max(1, target_chars - len(title) - 1), rng, fixed)
    return kind, f"{title}\n{body}"


def document_task(rng: random.Random, target_chars: int) -> tuple[str, str]:
    """(kind, user message): a task instruction followed by a document."""
    kind, text = document(rng, target_chars)
    return kind, f"{rng.choice(prompt_set()['document']['tasks'])}\n\n{text}"


def rag_context(target_chars: int, document: int = 0) -> str:
    """The retrieved context: the same text for the same size and document in every process
    (a shared prefix). Documents differ right after the common instruction (their own heading
    and order of passages), as different retrieved documents do."""
    rag = prompt_set()["rag"]
    passages = list(rag["passages"])
    out = [rag["instruction"]]
    if document:
        random.Random(document).shuffle(passages)
        out.append(f"【資料{document + 1}】")
    size = sum(len(p) + 1 for p in out)
    i = 0
    while size < target_chars:
        p = passages[i % len(passages)]
        out.append(p)
        size += len(p) + 1
        i += 1
    return "\n".join(out)


def rag_question(rng: random.Random) -> str:
    return rng.choice(prompt_set()["rag"]["questions"])


def chat_opening(rng: random.Random) -> tuple[str, str]:
    """(system prompt, first question) of a staff conversation."""
    data = prompt_set()
    return rng.choice(data["system_prompts"]), fill(rng.choice(data["staff_chat"]["questions"]), rng)


def chat_followup(rng: random.Random) -> str:
    return rng.choice(prompt_set()["staff_chat"]["followups"])


def municipal_query(rng: random.Random) -> str:
    return fill(rng.choice(prompt_set()["municipal"]["queries"]), rng)


def calibration_text() -> str:
    """A fixed administrative text for measuring a tokenizer's tokens per character."""
    return _compose(prompt_set()["document"]["kinds"]["report"]["paragraphs"], 600, random.Random(0))
