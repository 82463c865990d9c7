"""The static OpenAPI document of govllm's additions (openapi.yaml beside this module).

Served without authentication at GET /openapi.yaml and /openapi.json, so client developers
and API gateways can read which headers, endpoints and fields govllm adds to the OpenAI API.
The document is loaded and converted once per router process.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files

import yaml

from serving.router.asgi import Send

PATHS = ("/openapi.yaml", "/openapi.json")


@cache
def document() -> dict:
    return yaml.safe_load(files("serving.router").joinpath("openapi.yaml").read_text(encoding="utf-8"))


@cache
def _rendered(path: str) -> tuple[bytes, bytes]:
    if path.endswith(".json"):
        return b"application/json", json.dumps(document(), ensure_ascii=False).encode()
    return b"application/yaml", files("serving.router").joinpath("openapi.yaml").read_bytes()


async def send_openapi(path: str, send: Send) -> None:
    content_type, body = _rendered(path)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"public, max-age=300")]})
    await send({"type": "http.response.body", "body": body})
