"""The runnable examples of docs/api.md run against the stack as written (only the address and
the key differ from `make serve`'s), so the documentation cannot drift from the API."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCK = re.compile(r"```python\n# runnable: (\w+)\n(.*?)```", re.S)
EXAMPLES = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))


def test_the_doc_has_the_examples():
    assert {"setup", "embeddings", "rerank", "tools", "structured", "responses"} <= set(EXAMPLES)


@pytest.fixture(scope="module")
def namespace(stack) -> dict:
    setup = EXAMPLES["setup"]
    assert '"http://127.0.0.1:8000"' in setup and 'Path(".govllm/dev-api-key").read_text().strip()' in setup
    setup = setup.replace('"http://127.0.0.1:8000"', repr(stack.base_url)).replace(
        'Path(".govllm/dev-api-key").read_text().strip()', repr(stack.api_key))
    ns: dict = {}
    exec(compile(setup, "api.md:setup", "exec"), ns)
    return ns


@pytest.mark.parametrize("name", ["embeddings", "rerank", "tools", "structured", "responses"])
def test_example_runs(namespace, name):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(EXAMPLES[name], f"api.md:{name}", "exec"), namespace)
    assert out.getvalue().strip()
