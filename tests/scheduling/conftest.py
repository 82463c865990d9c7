"""The scheduling suite's stack: the shipped scaling spec (cluster/specs/local-scaling.yaml).

One stack for the whole session, started exactly as an operator would start it from that spec
(`govllm serve --spec ...`, through tests/stack.py) with only its own state directory, router
port and Redis port changed, so the tests check the spec that ships: a chat model that scales
1 -> 3 replicas, `tiny-llama-ja` fixed at 2 replicas (the prefix-aware routing tests), and an
on-demand model that scales to zero. Teardown sends SIGINT and requires every process gone.

Run under the machine's stack lock: `flock /tmp/govllm-stack.lock .venv/bin/python -m pytest -q
-s tests/scheduling`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from govllm.runtime_env import free_port
from tests import stack as stacks
from tests.stack import Stack

#: The shipped spec this suite runs.
SCALING_SPEC_PATH = Path(__file__).resolve().parents[2] / "cluster" / "specs" / "local-scaling.yaml"


def scaling_spec(root: Path) -> dict:
    """The shipped scaling spec with this run's own state directory and ports."""
    spec = yaml.safe_load(SCALING_SPEC_PATH.read_text())
    spec["state_dir"] = str(root / "state")
    spec["router"]["port"] = free_port()
    spec["store"]["port"] = free_port()
    return spec


@pytest.fixture(scope="package")
def scaling_stack(tmp_path_factory) -> Stack:
    root = tmp_path_factory.mktemp("scaling")
    s = stacks.start(root, scaling_spec(root))
    yield s
    stacks.stop(s)


@pytest.fixture(scope="package")
def scaling_client(scaling_stack):
    from openai import OpenAI

    return OpenAI(base_url=scaling_stack.base_url + "/v1", api_key=scaling_stack.api_key,
                  max_retries=0, timeout=120)
