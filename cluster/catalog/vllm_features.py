"""Names vLLM 0.32 registers for tool-call and reasoning parsers and structured-output backends.

The spec and the model catalog name parsers; a typo must fail `govllm validate`, not an
engine start minutes later on a GPU node. Rendering a spec never imports vLLM (the CPU
and GPU builds differ, and `govllm render` runs where neither is installed), so the
names are kept here and tests/unit/test_vllm_features.py checks them against the
installed vLLM's registries: an upgrade that adds or drops a parser fails that test.
"""

from __future__ import annotations

#: vllm.tool_parsers.ToolParserManager.lazy_parsers (vLLM 0.32.0).
TOOL_CALL_PARSERS: tuple[str, ...] = (
    "apertus", "cohere_command3", "cohere_command4", "deepseek_v3", "deepseek_v31", "deepseek_v32",
    "deepseek_v4", "deepseek_v41", "dots", "ernie45", "functiongemma", "gemma4", "gigachat3", "glm45",
    "glm47", "granite", "granite-20b-fc", "granite4", "hermes", "hf", "hunyuan_a13b", "hy_v3", "hy_v4",
    "inkling", "internlm", "jamba", "k2_horizon", "kimi_k2", "kimi_k3", "lfm2", "ling3", "llama3_json",
    "llama4_json", "llama4_pythonic", "longcat", "mimo", "minicpm5", "minimax_m2", "minimax_m3",
    "mistral", "muse_glimmer", "olmo3", "openai", "phi4_mini_json", "plamo3", "poolside_v1",
    "pythonic", "qwen3_coder", "qwen3_json", "qwen3_xml", "seed_oss", "step3", "step3p5", "xlam",
)

#: vllm.reasoning.ReasoningParserManager.lazy_parsers (vLLM 0.32.0).
REASONING_PARSERS: tuple[str, ...] = (
    "cohere_command3", "cohere_command4", "deepseek_r1", "deepseek_v3", "deepseek_v4", "deepseek_v41",
    "ernie45", "gemma4", "glm45", "glm47", "granite", "granite_thinking_parser", "hf", "holo2",
    "hunyuan_a13b", "hy_v3", "hy_v4", "inkling", "k2_horizon", "kimi_k2", "kimi_k3", "ling3", "mimo",
    "minicpmv", "minimax_m2", "minimax_m2_append_think", "minimax_m3", "mistral", "muse_glimmer",
    "nemotron_v3", "olmo3", "openai_gptoss", "plamo3", "poolside_v1", "qwen3", "seed_oss", "step3",
    "step3p5",
)

#: vllm.config.structured_outputs.StructuredOutputsBackend (vLLM 0.32.0).
STRUCTURED_OUTPUT_BACKENDS: tuple[str, ...] = ("auto", "xgrammar", "guidance", "outlines",
                                               "lm-format-enforcer")


def check_name(value: str | None, known: tuple[str, ...], what: str) -> str | None:
    """`value` when vLLM knows it (or None); a ValueError listing the known names otherwise."""
    if value is not None and value not in known:
        raise ValueError(f"unknown {what} {value!r}; vLLM 0.32 has: {', '.join(known)}")
    return value
