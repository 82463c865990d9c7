"""The request contract: what every step of the request path reads, writes and raises.

`RequestContext` carries one request through the router; `Step` and `Finisher` are the
shapes of the steps that enrich or refuse it and of the finishers that account for it;
`APIError` is how any of them refuses (an OpenAI error body); `Principal` is who called.
Tenancy, the PII guard, audit and vendor links import this module, never the router
(serving/router/), so the router composes them and nothing depends back on it. This module
imports nothing of serving/ but the configuration types it names.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from serving.config import ModelRoute, TenantSettings

Scope = dict[str, Any]


def header(scope: Scope, name: bytes) -> bytes | None:
    """First value of a request header; `name` must be lower-case."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


@dataclass(frozen=True)
class Principal:
    """Who is calling: carried through the request path into logs and audit."""

    tenant: str
    user: str
    method: str = "api_key"  # "api_key" | "oidc"
    credential_id: str = ""  # API key id, or the JWT's issuer-unique subject
    priority: str | None = None  # the API key's admission class, when issued with a lower one


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


@dataclass
class RequestContext:
    """Everything known about one request as it moves through the router."""

    request_id: str  # assigned by the router: the key of reservations, the ledger and the trail
    operation: str  # "chat" | "completions" | "models"
    scope: Scope
    client_request_id: str | None = None  # the client's x-request-id, kept for correlation only
    started_at: float = field(default_factory=time.perf_counter)
    wall_time: float = field(default_factory=time.time)
    principal: Principal | None = None
    tenant: TenantSettings | None = None
    confidentiality: int | None = None
    priority: str | None = None  # admission priority class (serving/router/admission/priority.py)
    usage_type: str | None = None
    reservation: str | None = None
    reserved_tokens: int = 0
    # set when admission's answer was lost (store timeout): the minute's request counter and
    # admission marks, so settlement takes back a count the refused request may hold
    uncounted: tuple[str, str] | None = None
    raw_body: bytes = b""
    payload: dict[str, Any] | None = None
    requested_model: str | None = None
    candidates: tuple[ModelRoute, ...] = ()
    model: ModelRoute | None = None
    stream: bool = False
    client_wants_usage: bool = False
    status: int | None = None
    error_code: str | None = None
    usage: dict[str, int] | None = None
    usage_estimated: bool = False  # a vendor reported no usage: counted by the router
    first_byte_at: float | None = None
    upstream: str | None = None
    attempts: list[str] = field(default_factory=list)  # "<model>@<replica url>: <outcome>" per try
    audit_begun: bool = False  # the begin record is durable (dispatch may start)
    audit_closed: bool = False  # the end record is queued or durable
    audit_begin_pending: bool = False  # queued, not yet durable (its waiter may be cancelled)
    audit_end_write: Any = None  # the end record's queued write: its future, or True if nobody waits
    # what was sent back, kept by reference for the audit record (parsed off the request path)
    response_chunks: list[bytes] = field(default_factory=list)
    response_body: bytes | None = None
    # headers every response to this request carries, success or error (the quota step's
    # x-ratelimit-*): appended where dispatch and the error path build response headers
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    pii: dict | None = None  # the personal-information guard's decision: types and counts, no values
    output_filter: Any = None  # masks the answer's identifiers (serving/pii/stream.py OutputFilter)
    trace: Any = None  # the request's spans when tracing is on (serving/observability/tracing/spans.py RequestTrace)

    @property
    def client(self) -> str | None:
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else None


class Step(Protocol):
    """One check or enrichment on the way in; raises APIError to refuse."""

    async def __call__(self, ctx: RequestContext) -> None: ...


class Finisher(Protocol):
    """Runs once per request after the response; must never raise."""

    async def __call__(self, ctx: RequestContext) -> None: ...
