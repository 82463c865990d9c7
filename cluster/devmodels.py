"""Generate the tiny development models that the embedded default serves.

Hub downloads are impossible on the development and CI machines, and a fake
engine is not acceptable, so the local stack serves real vLLM engines over
models created here: a byte-level BPE tokenizer trained on a few Japanese
administrative sentences plus randomly initialised weights of a real
architecture family. The weights are random, so the text is gibberish, but
every code path (tokenisation, chat templates, sampling, streaming, usage
accounting, context limits) is the one production models take.

Generation is deterministic (fixed seeds), so two machines produce the same
files and greedy decoding is reproducible across runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

#: Written into every generated model directory; regeneration is skipped when
#: the marker matches, so `make serve` is fast after the first run.
MARKER_FILE = "govllm-devmodel.json"
GENERATOR_VERSION = 3

JAPANESE_CORPUS: tuple[str, ...] = (
    "本日の会議では、来年度の予算案について議論しました。",
    "住民票の写しの交付申請は、市役所の窓口またはオンラインで受け付けています。",
    "個人情報の取扱いについては、関係法令に基づき適切に管理してください。",
    "災害時の避難所の開設状況は、防災課から随時お知らせします。",
    "行政手続のデジタル化により、申請から交付までの期間が短縮されました。",
    "この通知は、各府省庁の担当者に向けて送付するものです。",
    "マイナンバーカードの更新手続についてご案内いたします。",
    "生成AIの利用にあたっては、機密性2情報の取扱いに注意してください。",
    "議事録の要約を作成し、関係部署に共有してください。",
    "補助金の交付要綱を改正し、令和八年四月一日から施行します。",
    "地方公共団体の職員向けに、説明会を開催する予定です。",
    "ご質問は、デジタル庁の問い合わせ窓口までお寄せください。",
    "The meeting minutes were shared with the relevant divisions.",
    "Please summarise the attached notice in three sentences.",
)

#: Chat templates in the common ChatML shape that also render tools, the assistant's
#: tool calls and tool results, in the format of the family's vLLM tool-call parser
#: (hermes: Qwen 2.5's `<tool_call>` JSON; llama3_json: Llama 3.1's `<|python_tag|>`
#: JSON with `parameters`). Random weights never learn them, but vLLM applies them
#: exactly as it would for a real model, and tool_choice required/named is enforced by
#: guided decoding whatever the weights.
_TURNS = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first and tools %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{- '<|im_start|>assistant\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] %}{{- CALL_OPEN }}"
    # arguments arrive as a JSON string (OpenAI shape) and are spliced in verbatim
    "{{- '{\"name\": ' + (call['function']['name'] | tojson) + ', \"ARGS_KEY\": ' + "
    "(call['function']['arguments'] if call['function']['arguments'] is string "
    "else (call['function']['arguments'] | tojson)) + '}' }}{{- CALL_CLOSE }}{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>' + TOOL_ROLE + '\n' + RESULT_OPEN + message['content'] + RESULT_CLOSE + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
_TOOLS_PREAMBLE = (
    "{%- if tools %}{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- INSTRUCTION }}{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- TOOLS_CLOSE + '<|im_end|>\n' }}{%- endif %}"
)


def _template(*, call_open: str, call_close: str, args_key: str, tool_role: str, result_open: str,
              result_close: str, instruction: str, tools_close: str) -> str:
    """The ChatML template with the markers of one tool-call format filled in."""
    body = _TOOLS_PREAMBLE + _TURNS
    for name, value in (("CALL_OPEN", call_open), ("CALL_CLOSE", call_close), ("TOOL_ROLE", tool_role),
                        ("RESULT_OPEN", result_open), ("RESULT_CLOSE", result_close),
                        ("INSTRUCTION", instruction), ("TOOLS_CLOSE", tools_close)):
        body = body.replace(name, json.dumps(value, ensure_ascii=False))
    return body.replace("ARGS_KEY", args_key)


HERMES_TEMPLATE = _template(
    call_open="<tool_call>\n", call_close="\n</tool_call>", args_key="arguments", tool_role="user",
    result_open="<tool_response>\n", result_close="\n</tool_response>",
    instruction="# Tools\n\nYou may call one or more functions. Function signatures within "
    "<tools></tools>:\n<tools>",
    tools_close="\n</tools>\n\nFor each call return <tool_call>\n{\"name\": <name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>",
)
LLAMA3_JSON_TEMPLATE = _template(
    call_open="<|python_tag|>", call_close="", args_key="parameters", tool_role="ipython",
    result_open="", result_close="",
    instruction="Respond to a function call with JSON {\"name\": function name, \"parameters\": "
    "dictionary of argument name and value}. Functions:",
    tools_close="",
)

#: The tool-call parser each development family's template is written for, and the template.
TOOL_FORMATS: dict[str, tuple[str, str]] = {
    "llama": ("llama3_json", LLAMA3_JSON_TEMPLATE),
    "qwen2": ("hermes", HERMES_TEMPLATE),
    "cohere": ("hermes", HERMES_TEMPLATE),
}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")
#: Markers the parsers look up in the vocabulary (each must be one token); added after
#: training as ordinary (non-special) tokens, so they survive detokenisation as in Qwen 2.5.
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
               "<|python_tag|>", "<think>", "</think>")


@dataclass(frozen=True)
class DevModelShape:
    """The architecture knobs of a generated model.

    head_dim is 64 because vLLM's CPU attention rejects 16 (see
    docs/development.md); layers stay at 2 so a model loads in seconds.
    """

    family: str
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    max_position_embeddings: int = 2048
    vocab_size: int = 512
    seed: int = 0
    head: str = "lm"  # "lm": a causal LM (chat, or an embedder by pooling); "classify": a one-label
    # sequence classifier, i.e. a cross-encoder reranker (Qwen3-Reranker-style)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _train_tokenizer(vocab_size: int, corpus: Iterable[str], chat_template: str = HERMES_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.add_tokens(list(TOOL_TOKENS))
    fast.chat_template = chat_template
    return fast


def _llama_config(shape: DevModelShape, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )


def _qwen2_config(shape: DevModelShape, tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        max_window_layers=shape.num_layers,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )


def _cohere_config(shape: DevModelShape, tokenizer):
    from transformers import CohereConfig

    return CohereConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )


_CONFIG_BUILDERS: dict[str, Callable] = {
    "llama": _llama_config,
    "qwen2": _qwen2_config,
    "cohere": _cohere_config,
}
FAMILIES: tuple[str, ...] = tuple(_CONFIG_BUILDERS)
#: Families whose generated model can be a one-label classifier (a reranker, kind: rerank).
RERANK_FAMILIES: tuple[str, ...] = ("llama", "qwen2")


def _model_class(family: str, head: str = "lm"):
    import transformers

    if head == "classify":
        return {
            "llama": transformers.LlamaForSequenceClassification,
            "qwen2": transformers.Qwen2ForSequenceClassification,
        }[family]
    return {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "cohere": transformers.CohereForCausalLM,
    }[family]


def _marker(shape: DevModelShape) -> dict:
    return {"generator_version": GENERATOR_VERSION, "shape": shape.__dict__}


def is_current(path: Path, shape: DevModelShape) -> bool:
    """True when `path` holds a model this generator made for `shape`."""
    marker = path / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _marker(shape)
    except (OSError, ValueError):
        return False


def generate(path: Path, shape: DevModelShape) -> Path:
    """Write a tokenizer and random float32 weights for `shape` to `path`.

    The model is written to a temporary sibling directory and renamed into
    place, so an interrupted run never leaves a half-written model that a
    later `make serve` would try to load.
    """
    import torch

    if shape.family not in _CONFIG_BUILDERS:
        raise ValueError(
            f"unknown development model family {shape.family!r}; "
            f"choose one of {', '.join(FAMILIES)}"
        )
    if shape.head == "classify" and shape.family not in RERANK_FAMILIES:
        raise ValueError(f"a development reranker must be one of {', '.join(RERANK_FAMILIES)}")
    path = Path(path)
    if is_current(path, shape):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(shape.vocab_size, JAPANESE_CORPUS, TOOL_FORMATS[shape.family][1])
    config = _CONFIG_BUILDERS[shape.family](shape, tokenizer)
    if shape.head == "classify":
        config.num_labels = 1  # one relevance score per (query, document) pair: vLLM's score/rerank
    torch.manual_seed(shape.seed)
    model = _model_class(shape.family, shape.head)(config).to(torch.float32)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}-") as tmp:
        staging = Path(tmp) / "model"
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MARKER_FILE).write_text(json.dumps(_marker(shape), indent=2))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    return path
