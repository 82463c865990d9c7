"""examples/rag_ja.py runs end to end against the stack, as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from rag_ja import PARAGRAPHS  # noqa: E402


def test_rag_example_indexes_retrieves_reranks_and_cites(stack):
    key = json.loads(stack.cli("keys", "create", "--tenant", "rag-town", "--user", "rag-example",
                               "--json").stdout)["key"]
    question = PARAGRAPHS["bosai-02"]  # a question worded exactly as a paragraph: cosine 1 for it
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "rag_ja.py"), "--json", "--question", question,
         "--base-url", stack.base_url, "--api-key", key],
        capture_output=True, text=True, timeout=180, check=True, cwd=ROOT)
    result = json.loads(out.stdout)
    assert result["retrieved"][0] == {"id": "bosai-02", "similarity": pytest.approx(1.0, abs=1e-3)}
    assert [r["similarity"] for r in result["retrieved"]] == sorted(
        (r["similarity"] for r in result["retrieved"]), reverse=True)
    assert result["reranked"][0]["id"] == "bosai-02" and len(result["reranked"]) == 2
    assert result["citations"]["[1]"] == "bosai-02" and set(result["citations"]) == {"[1]", "[2]"}
    assert {r["id"] for r in result["reranked"]} <= {r["id"] for r in result["retrieved"]}
    assert isinstance(result["answer"], str) and result["tokens"]["index"] > 0
