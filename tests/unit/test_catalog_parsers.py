"""The model catalog's tool-call and reasoning parsers: names vLLM registers, one per family,
and a reason wherever none fits (cluster/catalog/vllm_features.py, catalog/data/models.yaml)."""

from __future__ import annotations

import pytest

from cluster.catalog import vllm_features


def test_parser_names_match_the_installed_vllm():
    pytest.importorskip("vllm")
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    assert set(vllm_features.TOOL_CALL_PARSERS) == set(ToolParserManager.lazy_parsers)
    assert set(vllm_features.REASONING_PARSERS) == set(ReasoningParserManager.lazy_parsers)


def test_catalog_records_parsers_for_every_family_and_says_why_where_none_fits():
    from cluster.catalog.cards import model_catalog

    cards = {m.id: m for m in model_catalog().models}
    assert cards["llama-3.1-elyza-jp-70b"].parsers.tool_call_parser == "llama3_json"
    assert cards["takane-32b"].parsers.tool_call_parser is None
    assert "Command R" in cards["takane-32b"].parsers.note
    for card in cards.values():
        assert card.parsers.note  # every None is explained
