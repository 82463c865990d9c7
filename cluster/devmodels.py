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
GENERATOR_VERSION = 2

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

#: A minimal chat template in the common ChatML shape. Random weights never
#: learn it, but vLLM applies it exactly as it would for a real model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")


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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _train_tokenizer(vocab_size: int, corpus: Iterable[str]):
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
    fast.chat_template = CHAT_TEMPLATE
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


def _model_class(family: str):
    import transformers

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
    path = Path(path)
    if is_current(path, shape):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(shape.vocab_size, JAPANESE_CORPUS)
    config = _CONFIG_BUILDERS[shape.family](shape, tokenizer)
    torch.manual_seed(shape.seed)
    model = _model_class(shape.family)(config).to(torch.float32)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}-") as tmp:
        staging = Path(tmp) / "model"
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MARKER_FILE).write_text(json.dumps(_marker(shape), indent=2))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    return path
