"""The OpenAPI document of govllm's additions: valid OpenAPI 3.1, and what it says agrees with
the code it describes (so a changed field or header fails here, not in a client's SDK)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from openapi_spec_validator import validate

from serving.router.feedback import MAX_COMMENT, FeedbackRequest
from serving.router.openapi import document, send_openapi
from serving.router.pipeline import USAGE_TYPES

ROOT = Path(__file__).resolve().parents[2]


def test_the_document_is_valid_openapi():
    validate(document())


def test_feedback_schema_matches_the_router_model():
    doc = document()["components"]["schemas"]["FeedbackRequest"]
    model = FeedbackRequest.model_json_schema()
    assert set(doc["properties"]) == set(model["properties"])
    assert sorted(doc["required"]) == sorted(model["required"])
    assert doc["properties"]["comment"]["maxLength"] == MAX_COMMENT
    assert doc["additionalProperties"] is False  # the model forbids extra fields
    assert FeedbackRequest.model_config.get("extra") == "forbid"


def test_headers_match_the_code():
    params = document()["components"]["parameters"]
    assert tuple(params["UsageType"]["schema"]["enum"]) == USAGE_TYPES
    assert params["Confidentiality"]["name"] == "x-confidentiality"


def test_docs_ship_the_same_file_and_both_renderings_agree():
    assert (ROOT / "docs" / "openapi.yaml").read_bytes() == (
        ROOT / "serving" / "router" / "openapi.yaml").read_bytes()
    sent: dict[str, list] = {}
    for path in ("/openapi.yaml", "/openapi.json"):
        messages: list[dict] = []

        async def send(message, messages=messages):
            messages.append(message)

        asyncio.run(send_openapi(path, send))
        sent[path] = messages
    assert json.loads(sent["/openapi.json"][1]["body"]) == document()
    assert dict(sent["/openapi.yaml"][0]["headers"])[b"content-type"] == b"application/yaml"
