"""How long `govllm serve` of the embedded default takes to be ready, and its memory, per model set.

    flock /tmp/govllm-stack.lock .venv/bin/python loadtest/bench_serve_start.py --rounds 2

Starts cluster/specs/local.yaml (fresh state directory, so the development models are generated
as on a first `make serve`) through tests/stack.py exactly as the integration suite does, in
three variants side by side: the chat models only (`chat`), the default (`default`: chat models
and the embedding model) and the default plus a generated cross-encoder (`rerank`). Prints one
JSON line per start: seconds until /readyz answers 200, and the resident memory summed over the
stack's processes (shared pages counted once per process, so an upper bound).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.spec.schema import DEFAULT_SPEC_PATH  # noqa: E402
from govllm.runtime_env import free_port  # noqa: E402
from tests import stack as stacks  # noqa: E402

RERANKER = {"id": "tiny-rerank-ja", "kind": "rerank", "revision": "dev-rerank-v1",
            "source": {"dev_model": {"family": "qwen2", "seed": 2}}, "max_model_len": 512,
            "max_confidentiality": 2}


def spec_for(variant: str, root: Path) -> dict:
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    if variant == "chat":
        spec["models"] = [m for m in spec["models"] if m.get("kind", "chat") == "chat"]
    elif variant == "rerank":
        spec["models"].append(RERANKER)
    spec["state_dir"] = str(root / "state")
    spec["router"].update(port=free_port())
    spec["store"] = {"embedded": True, "port": free_port()}
    return spec


def measure(variant: str) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"govllm-start-{variant}-") as tmp:
        root = Path(tmp)
        spec = spec_for(variant, root)
        started = time.monotonic()
        stack = stacks.start(root, spec)
        ready = time.monotonic() - started
        rss = sum(p.memory_info().rss for p in stack.descendants() if p.is_running())
        stacks.stop(stack)
    return {"variant": variant, "models": [m["id"] for m in spec["models"]],
            "ready_s": round(ready, 1), "rss_gib": round(rss / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", default="chat,default,rerank")
    args = parser.parse_args()
    for _ in range(args.rounds):
        for variant in args.variants.split(","):
            print(json.dumps(measure(variant), ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
