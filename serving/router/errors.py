"""OpenAI-style errors: every failure leaves the router as one of these.

The body is always ``{"error": {"message", "type", "param", "code"}}`` so the
official SDKs raise their typed exceptions (BadRequestError, NotFoundError,
...) with our message. `type` uses OpenAI's vocabulary; `code` is a stable
machine-readable string that runbooks and clients can match on.
"""

from __future__ import annotations

import json
from typing import Any

#: OpenAI's `type` for each status class we emit.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "timeout_error",
}


def error_type_for(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "server_error" if status >= 500 else "invalid_request_error"


class APIError(Exception):
    """A request the router answers with an error instead of forwarding."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or error_type_for(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def encode_error(exc: APIError) -> bytes:
    return json.dumps(exc.body(), ensure_ascii=False).encode()
