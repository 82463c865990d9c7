"""Forwarding a validated request to a model replica and relaying the answer.

Order of events for one request:

1. admission (serving/router/admission/): a model of the candidates and a
   slot on it, or 503/429 with Retry-After;
2. the audit *begin* record is made durable (`before_dispatch`), so a prompt
   never reaches an engine unrecorded, even if this router dies mid-answer;
3. attempts: a replica is chosen (`router.replica_choice`: by default the
   one likely to hold the request's prefix in its KV cache, from a key
   computed once per request; serving/router/replica_choice.py) and sent the
   request with the data-plane
   credential (the client's own key never leaves the router). A replica
   that refuses the connection, answers 5xx while its `/health` fails, or
   sends nothing within `upstream_first_byte_timeout_s` is ejected (passive
   health) and the request goes to another replica or the next model of its
   alias group. Refused connections never reached an engine and are retried
   freely; an engine failure or timeout is retried once. Nothing has been
   sent to the client before the first upstream event arrives, so a retry is
   invisible to it;
4. relaying: non-streamed bodies whole; streams as bytes, cut on SSE event
   boundaries (never half an event), with the engine's per-chunk token count
   read and removed by the StreamMeter (serving/router/metering.py), so
   billing counts what was delivered. A stream silent for
   `stream_idle_timeout_s`, cut by the replica or ended by an engine error
   gets an error event in govllm's vocabulary. A client that takes no data for
   `client_send_timeout_s` (it stopped reading) is sent nothing more and its
   request ends (408 `client_read_timeout` on the trail, billed what was
   sent), so it cannot hold an admission slot for HAProxy's hour;
5. the audit end record is made durable (`before_end`) before the last bytes
   (the non-streamed body or the stream's `data: [DONE]`).

Vendor endpoints (serving/vendor/) take the same path with their own URL,
credential, TLS trust and timeouts; before the first attempt the contract's
per-minute counters are taken in the shared store (a refusal moves on to the
next model of the alias group, else 429 `vendor_rate_limited`), and the
token window is corrected to the real usage when the request ends. A vendor
that answers 5xx, refuses govllm's credential or times out opens its circuit
(is ejected) and the request fails over; its 429 opens it for the vendor's
Retry-After. When a vendor reports no usage, tokens are estimated
(serving/vendor/link.py) and the audit record says so.

Disconnects: when the client goes away, Ray Serve cancels this coroutine (or
the next `send` fails); closing the upstream response then closes the
connection to the replica, and vLLM aborts the generation.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from serving.config import ModelRoute, RouterSettings
from serving.model_kinds import OPERATION_PATHS
from serving.observability.tracing.off import NO_TRACING
from serving.request import APIError, RequestContext
from serving.router.admission import Admission
from serving.router.asgi import ClientTooSlow, Send
from serving.router.cold_start import ColdStart
from serving.router.endpoints import Endpoint, EndpointTable
from serving.router.metering import StreamMeter, upstream_stream_options
from serving.router.replica_choice import prefix_key
from serving.router.responses_meter import ResponsesMeter, input_bytes
from serving.tenancy.reservation import reservation_for
from serving.vendor.contract import ContractLimiter, ContractRefused, Ticket
from serving.vendor.link import VendorLink, estimate_usage, prompt_chars

_PATHS = OPERATION_PATHS
_EVENT_END = b"\n\n"
_DONE = b"data: [DONE]\n\n"
_MAX_ERROR_BODY = 64 * 1024
_CONNECT_ERRORS = (aiohttp.ClientConnectorError, ConnectionRefusedError)
_BROKEN = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
           ConnectionError)
_HEALTH_TIMEOUT_S = 2.0
_ENGINE_RETRIES = 1
_CONTRACT_CODES = frozenset({"vendor_rate_limited", "vendor_limits_unavailable"})
_UNSET = object()  # a prefix key not computed yet (None is "no key")

Hook = Callable[[RequestContext], Awaitable[None]]


async def _nothing(ctx: RequestContext) -> None:
    return None


class _Failed(Exception):
    """An attempt failed before anything reached the client; `retry` says whether it may move on."""

    def __init__(self, error: APIError, *, free: bool):
        super().__init__(error.message)
        self.error, self.free = error, free


#: How often the router looks for streams whose client stopped reading (cut_stalled_clients).
STALLED_CLIENT_CHECK_S = 1.0


class _Relay:
    """One stream being relayed, as the stalled-client watchdog sees it (`cut_stalled_clients`).

    The relay marks each send to the client (a flag and a count: no clock read, no timer per
    event, which measurably cost the relay); the watchdog finds relays stuck in the same send
    and fires their deadline once it has lasted `client_send_timeout_s`.
    """

    __slots__ = ("deadline", "in_send", "sent", "seen", "stuck_since")

    def __init__(self, deadline: asyncio.Timeout):
        self.deadline = deadline
        self.in_send = False
        self.sent = 0  # sends completed
        self.seen = -1  # `sent` when the watchdog last looked
        self.stuck_since = 0.0


class Dispatcher:
    """Forwards to model replicas.

    `before_dispatch` runs once, after admission and before the first attempt
    (the audit begin record). `before_end` runs after the answer has been
    produced and before its last bytes are sent (the audit end record), so a
    client that saw a complete answer can rely on it being recorded. Tokens
    never wait for either.
    """

    def __init__(self, table: EndpointTable, settings: RouterSettings, admission: Admission, *,
                 data_plane_token: str, before_dispatch: Hook = _nothing, before_end: Hook = _nothing,
                 contracts: dict[str, ContractLimiter] | None = None, tracer: Any = None):
        self._table = table
        self._trace = tracer or NO_TRACING  # spans of admission and attempts (serving/observability/tracing)
        self._contracts = contracts or {}
        self._settings = settings
        self._admission = admission
        self._before_dispatch = before_dispatch
        self._before_end = before_end
        self._auth = f"Bearer {data_plane_token}"
        self._session: aiohttp.ClientSession | None = None
        self.failovers: Counter[str] = Counter()  # per model (serving/router/metrics/sampler.py)
        self._relays: set[_Relay] = set()  # streams being relayed, for cut_stalled_clients
        #: Wakes on-demand models at zero replicas (serving/router/cold_start.py); set by the
        #: router deployment, which holds the models' Serve handles.
        self.cold_start: ColdStart | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(
                    total=self._settings.request_timeout_s,
                    sock_connect=self._settings.upstream_connect_timeout_s,
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- health ---------------------------------------------------------------------------------
    async def healthy(self, ep: Endpoint) -> bool:
        """Whether the replica's engine answers its health check (vLLM: 503 once the engine died);
        for a vendor, whether its health URL answers 200 to govllm's credential."""
        link = ep.vendor
        if link is not None and link.problem:
            return False
        url = link.health_url if link else ep.url + "/health"
        headers = link.headers("probe") if link else {"Authorization": self._auth}
        try:
            async with self._client().get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=_HEALTH_TIMEOUT_S),
                **_tls(link),
            ) as resp:
                ep.last_probe = "" if resp.status == 200 else (
                    f"refused govllm's credential, HTTP {resp.status}" if resp.status in (401, 403)
                    else f"HTTP {resp.status}")
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ep.last_probe = type(exc).__name__
            return False

    @staticmethod
    def _slow_but_streaming(ep: Endpoint) -> bool:
        """A probe that timed out while this router's streams on the replica were still receiving
        tokens: the replica is slow (its HTTP side starved of CPU, e.g. beside engines starting on
        the same cores), not hung. Ejecting it would cut those live streams short (seen in the
        scheduling suite's spike); a replica that really hangs stops streaming too and is ejected
        by the next probe, or at once by its own requests' deadlines."""
        return (ep.vendor is None and ep.last_probe == "TimeoutError"
                and time.monotonic() - ep.last_data_at < _HEALTH_TIMEOUT_S)

    async def cut_stalled_clients(self) -> None:
        """End the streams whose client has taken nothing for `client_send_timeout_s`.

        A client that stops reading (its socket buffers full) would otherwise hold its request's
        admission slot until HAProxy's client timeout, an hour. Run every
        STALLED_CLIENT_CHECK_S: a stream is cut between the timeout and one round after it.
        """
        now = time.monotonic()
        for relay in list(self._relays):
            if not relay.in_send:  # reading from the engine: nothing to judge
                relay.seen = -1
            elif relay.sent != relay.seen:  # a send seen for the first time: its clock starts
                relay.seen, relay.stuck_since = relay.sent, now
            elif now - relay.stuck_since >= self._settings.client_send_timeout_s:
                relay.deadline.reschedule(asyncio.get_running_loop().time())

    async def probe_once(self) -> None:
        """Probe every known replica: eject the silent or dead, readmit the recovered."""
        now = time.monotonic()
        eps = [ep for ep in self._table.endpoints() if self._table.due_for_probe(ep, now)]
        results = await asyncio.gather(*(self.healthy(ep) for ep in eps))
        for ep, ok in zip(eps, results, strict=True):
            if ep.vendor is not None:
                ep.next_probe_at = now + ep.vendor.settings.probe_interval_s
                if ep.vendor.problem:
                    continue
            if ok and self._table.may_readmit(ep):
                self._table.readmit(ep)
            elif not ok and not ep.ejected:
                if not self._slow_but_streaming(ep):
                    self._table.eject(ep, f"health probe failed ({ep.last_probe})", failed=ep.vendor is not None)
            elif not ok and ep.vendor is not None and self._table.may_readmit(ep):
                # half-open probe failed: the circuit opens again, for twice as long
                self._table.readmit(ep)
                self._table.eject(ep, f"half-open probe failed ({ep.last_probe})", failed=True)
        self._admission.resize()

    # -- forwarding -----------------------------------------------------------------------------
    def _body_for(self, ctx: RequestContext, model: ModelRoute) -> bytes:
        """The upstream body: the client's bytes unless the model name or stream options must change.

        Streams always ask the engine for per-chunk usage (billing counts what was delivered);
        when the client sent no stream options, they are appended to its bytes rather than
        re-serialising the whole (possibly large) body.
        """
        payload = ctx.payload or {}
        link = self.vendor_link(model.id)
        if link is not None:
            return link.body(payload, stream=ctx.stream)
        chunk_usage = ctx.stream and ctx.operation != "responses"  # Responses streams end with usage
        if ctx.requested_model == model.id and not chunk_usage:
            return ctx.raw_body
        if ctx.requested_model == model.id and "stream_options" not in payload:
            body = ctx.raw_body.rstrip()
            return body[:-1] + b',"stream_options":{"include_usage":true,"continuous_usage_stats":true}}'
        out = dict(payload)
        out["model"] = model.id
        if chunk_usage:
            out["stream_options"] = upstream_stream_options(payload.get("stream_options"))
        return json.dumps(out, ensure_ascii=False).encode()

    def vendor_link(self, model_id: str) -> VendorLink | None:
        eps = self._table.static.get(model_id)
        return eps[0].vendor if eps else None

    async def _contract(self, ctx: RequestContext, model: ModelRoute) -> Ticket | None:
        """Count the request against its vendor's contract; APIError when it is at a limit."""
        limiter = self._contracts.get(model.id)
        if limiter is None:
            return None
        try:
            # the quota step already bounded this request when its tenant has a budget
            return await limiter.acquire(ctx.reserved_tokens or reservation_for(ctx), ctx.request_id)
        except ContractRefused as refused:
            ctx.attempts.append(f"{model.id}: contract {refused.limit}")
            if refused.limit == "store":
                raise APIError(503, f"Model '{model.id}' cannot be used now: {refused.detail}; retry "
                               f"after {refused.retry_after_s} s.", code="vendor_limits_unavailable",
                               headers={"Retry-After": str(refused.retry_after_s)}) from None
            raise APIError(429, f"Model '{model.id}' is at its vendor contract's limit: {refused.detail}; "
                           f"retry after {refused.retry_after_s} s.", code="vendor_rate_limited",
                           type="rate_limit_error",
                           headers={"Retry-After": str(refused.retry_after_s)}) from None

    async def _settle_contract(self, model: ModelRoute, ticket: Ticket | None, ctx: RequestContext) -> None:
        if ticket is not None:
            await self._contracts[model.id].settle(ticket, int((ctx.usage or {}).get("total_tokens") or 0))

    async def forward(self, ctx: RequestContext, send: Send) -> None:
        """Admit, record the begin, and try replicas until one answers or the request must fail."""
        path = _PATHS[ctx.operation]
        headers = {"Content-Type": "application/json", "X-Request-Id": ctx.request_id,
                   "Authorization": self._auth}
        tenant = ctx.tenant.id if ctx.tenant else "anonymous"
        if self.cold_start is not None:  # an on-demand model at zero: wake it, wait (no slot held)
            await self.cold_start.ready(ctx.candidates)
        excluded_models: set[str] = set()
        tried: set[str] = set()
        engine_retries = _ENGINE_RETRIES
        last: APIError | None = None
        key: Any = _UNSET
        while True:
            try:
                with self._trace.admission(ctx):
                    model, slot = await self._admission.admit(ctx.candidates, tenant, excluded_models,
                                                              ctx.priority)
            except APIError as exc:
                if last is not None and exc.code == "model_unavailable":
                    raise (last if last.code in _CONTRACT_CODES
                           else self._unavailable(ctx, last)) from None
                raise
            ticket: Ticket | None = None
            try:
                try:
                    ticket = await self._contract(ctx, model)
                except APIError as refused:
                    last = refused
                    excluded_models.add(model.id)
                    continue
                if not ctx.audit_begun:
                    await self._before_dispatch(ctx)
                body = self._body_for(ctx, model)
                if key is _UNSET:  # once per request, and only when the policy uses it
                    key = self._prefix_key(ctx)
                while (ep := self._table.pick(model.id, exclude=tried, key=key,
                                              slots=model.max_ongoing_per_replica)) is not None:
                    tried.add(ep.replica_id)
                    try:
                        with self._trace.attempt(ctx, model, ep, path, headers) as sent:
                            await self._attempt(ctx, model, ep, path, body, sent, send)
                        return
                    except _Failed as failed:
                        last = failed.error
                        self.failovers[model.id] += 1
                        if not failed.free:
                            if engine_retries == 0:
                                raise self._unavailable(ctx, last) from None
                            engine_retries -= 1
            finally:
                slot.release()
                await self._settle_contract(model, ticket, ctx)
            excluded_models.add(model.id)

    def _prefix_key(self, ctx: RequestContext) -> int | None:
        """The request's prefix key under prefix_affinity (serving/router/replica_choice.py)."""
        if self._settings.replica_choice != "prefix_affinity":
            return None
        return prefix_key(ctx.operation, ctx.payload, self._settings.prefix_affinity_chars)

    def _unavailable(self, ctx: RequestContext, last: APIError) -> APIError:
        names = ", ".join(m.id for m in ctx.candidates)
        retry = min(self._table.retry_after_s(m.id) for m in ctx.candidates)
        return APIError(
            503 if last.status != 504 else 504,
            f"Model {names} could not answer ({last.message}); retry after {retry} s.",
            code="model_unavailable" if last.status != 504 else "upstream_timeout",
            headers={"Retry-After": str(retry)},
        )

    async def _attempt(self, ctx: RequestContext, model: ModelRoute, ep: Endpoint, path: str,
                       body: bytes, headers: dict[str, str], send: Send) -> None:
        """One try on one replica; raises _Failed when the request may go elsewhere.

        The wait for the replica's first answer is registered on the endpoint, so an
        ejection (by this router or another) cuts it short: nothing has reached the
        client yet, and the request is retried elsewhere.
        """
        where = f"{model.id}@{ep.url}"
        ctx.model, ctx.upstream = model, ep.url
        link = ep.vendor
        cuts = ep.cuts
        ep.inflight += 1
        resp = None
        try:
            try:
                async with asyncio.timeout(self._first_byte_s(ep) if ctx.stream else None) as deadline:
                    ep.waiting.add(deadline)
                    try:
                        if link is None:
                            resp = await self._client().post(ep.url + path, data=body, headers=headers)
                        else:
                            resp = await self._client().post(
                                link.url(path), data=body, headers=link.headers(ctx.request_id),
                                timeout=aiohttp.ClientTimeout(
                                    total=self._settings.request_timeout_s,
                                    sock_connect=link.settings.connect_timeout_s),
                                **_tls(link))
                        if resp.status != 200:
                            await self._refused(ctx, ep, where, resp)
                        answer = await (self._first_events(resp) if ctx.stream else resp.read())
                    finally:
                        ep.waiting.discard(deadline)
            except _CONNECT_ERRORS as exc:
                self._table.eject(ep, "connection refused", failed=link is not None)
                ctx.attempts.append(f"{where}: connection refused")
                raise _Failed(APIError(503, "connection refused", code="model_unavailable"),
                              free=True) from exc
            except _BROKEN as exc:
                self._table.eject(ep, "connection broken", failed=True)
                ctx.attempts.append(f"{where}: connection broken")
                raise _Failed(APIError(503, "the replica closed the connection",
                                       code="model_unavailable"), free=False) from exc
            except TimeoutError:
                raise self._timed_out(ctx, ep, where, cut=ep.cuts != cuts) from None
            if not ctx.stream:
                ctx.attempts.append(f"{where}: ok")
                self._table.succeeded(ep)
                await self._relay_body(ctx, resp, answer, send)
                return
            if answer is None:  # the engine failed before its first token: invisible to the client
                self._table.eject(ep, "engine failed before its first token", failed=True)
                ctx.attempts.append(f"{where}: engine failed before the first token")
                raise _Failed(APIError(503, "the engine failed before answering",
                                       code="model_unavailable"), free=False)
            ctx.attempts.append(f"{where}: streaming")
            self._table.succeeded(ep)
            await self._relay_stream(ctx, ep, resp, answer, send)
        finally:
            ep.inflight -= 1
            if resp is not None:
                resp.close()  # a no-op after a full read; aborts the engine request otherwise

    async def _refused(self, ctx: RequestContext, ep: Endpoint, where: str, resp: Any) -> None:
        """A non-200 answer: the engine's own refusal (raised to the client), or a failed engine."""
        raw = await resp.content.read(_MAX_ERROR_BODY)
        ctx.attempts.append(f"{where}: HTTP {resp.status}")
        if ep.vendor is not None:
            self._vendor_refused(ctx, ep, resp)
        error = await self._upstream_error(ctx, ep, resp.status, raw)
        if ep.vendor is not None and resp.status >= 500:  # the circuit opens on any server error
            self._table.eject(ep, f"vendor failed (HTTP {resp.status})", failed=True)
            raise _Failed(error, free=False)
        if resp.status >= 500 and not await self.healthy(ep):
            self._table.eject(ep, f"engine failed (HTTP {resp.status})", failed=True)
            raise _Failed(error, free=False)
        raise error

    def _vendor_refused(self, ctx: RequestContext, ep: Endpoint, resp: Any) -> None:
        """A vendor's 429 (its own rate limit) or 401/403 (govllm's credential): fail over.

        The vendor's message is not passed on: for a refused credential it may quote part
        of the key, and either way it is the operator's matter, not the client's.
        """
        name = ctx.model.id
        if resp.status == 429:
            hold = _seconds(resp.headers.get("Retry-After")) or ep.vendor.settings.open_s
            self._table.eject(ep, "vendor rate limit (HTTP 429)", hold_s=hold)
            raise _Failed(APIError(429, f"The vendor of model '{name}' is at its rate limit; retry "
                                   f"after {math.ceil(hold)} s.", code="vendor_rate_limited",
                                   type="rate_limit_error",
                                   headers={"Retry-After": str(math.ceil(hold))}), free=True)
        if resp.status in (401, 403):
            self._table.eject(ep, f"vendor refused govllm's credential (HTTP {resp.status})", failed=True)
            raise _Failed(APIError(502, f"The vendor endpoint of model '{name}' refused govllm's "
                                   "credential; the operator has been told (see /readyz).",
                                   code="vendor_auth_failed", type="server_error"), free=True)

    def _first_byte_s(self, ep: Endpoint) -> float:
        if ep.vendor is not None:
            return ep.vendor.settings.first_byte_timeout_s
        return self._settings.upstream_first_byte_timeout_s

    def _timed_out(self, ctx: RequestContext, ep: Endpoint, where: str, *, cut: bool) -> Exception:
        """What a deadline before the first answer byte means for the request."""
        if cut:  # ejected while we waited (by a probe, another request or another router)
            ctx.attempts.append(f"{where}: taken out of rotation while waiting ({ep.reason})")
            return _Failed(APIError(503, f"the replica stopped answering ({ep.reason})",
                                    code="model_unavailable"), free=False)
        if not ctx.stream:  # the whole answer took longer than request_timeout_s: not retried
            ctx.attempts.append(f"{where}: no answer within {self._settings.request_timeout_s:g} s")
            return APIError(504, f"Model '{ctx.model.id}' did not answer within "
                            f"{self._settings.request_timeout_s:g} s.", code="upstream_timeout")
        self._table.eject(ep, "no first byte in time", failed=ep.vendor is not None)
        ctx.attempts.append(f"{where}: no first byte within {self._first_byte_s(ep):g} s")
        return _Failed(APIError(504, f"model '{ctx.model.id}' did not start answering in time",
                                code="upstream_timeout"), free=False)

    async def _first_events(self, resp: Any) -> bytes | None:
        """Read up to the first complete SSE event; None when it is an engine error."""
        pending = b""
        while _EVENT_END not in pending:
            data = await resp.content.readany()
            if not data:
                break
            pending += data
        if not pending or pending.startswith(b'data: {"error"'):
            return None
        return pending

    async def _relay_body(self, ctx: RequestContext, resp: Any, body: bytes, send: Send) -> None:
        ctx.usage = _usage_of(body)
        link = self.vendor_link(ctx.model.id)
        if link is not None:
            body = link.renamed(body)
            if ctx.usage is None:
                ctx.usage, ctx.usage_estimated = estimate_usage(ctx.operation, ctx.payload or {}, body), True
        if ctx.output_filter is not None:  # personal information in the answer (serving/pii)
            body = ctx.output_filter.filter_body(body)
        ctx.status = 200
        ctx.response_body = body
        await self._before_end(ctx)
        await send({"type": "http.response.start", "status": 200,
                    "headers": self._start_headers(ctx, resp.headers.get("Content-Type", "application/json"))
                    + [(b"content-length", str(len(body)).encode())]})
        ctx.first_byte_at = time.perf_counter()
        # recorded and billed already; a client that leaves the answer unread frees the slot
        await self._sent_in_time(send, {"type": "http.response.body", "body": body})

    def _start_headers(self, ctx: RequestContext, content_type: str) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", content_type.encode()), (b"x-govllm-model", ctx.model.id.encode()),
                (b"x-govllm-request-id", ctx.request_id.encode()), *ctx.response_headers]

    async def _relay_stream(self, ctx: RequestContext, ep: Endpoint, resp: Any, first: bytes,
                            send: Send) -> None:
        loop = asyncio.get_running_loop()
        options = (ctx.payload or {}).get("stream_options") or {}
        counted = ep.vendor is not None and ep.vendor.settings.stream_usage == "final"
        meter = _responses_meter(ctx) or StreamMeter(
            choices_per_prompt=int((ctx.payload or {}).get("n") or 1),
            keep_chunk_usage=bool(options.get("continuous_usage_stats")) and ctx.client_wants_usage,
            keep_final_usage=ctx.client_wants_usage,
            prompt_estimate=prompt_chars(ctx.operation, ctx.payload or {}) if counted else None,
        )
        headers = self._start_headers(ctx, "text/event-stream; charset=utf-8")
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        ctx.status = 200
        idle = (ep.vendor.settings.stream_idle_timeout_s if ep.vendor is not None
                else self._settings.stream_idle_timeout_s)
        pending, done, failure, cuts, relay = first, b"", None, ep.cuts, None
        try:
            async with asyncio.timeout(None) as deadline:
                ep.waiting.add(deadline)
                relay = _Relay(deadline)
                self._relays.add(relay)
                while True:
                    cut = pending.rfind(_EVENT_END)
                    if cut >= 0:
                        out, pending = pending[: cut + 2], pending[cut + 2:]
                        if out.endswith(_DONE):
                            done, out = _DONE, out[: -len(_DONE)]
                        out, seen = meter.scan(out)
                        if ep.vendor is not None:
                            out = ep.vendor.renamed(out)
                        if ctx.output_filter is not None:  # personal information in the answer
                            out = ctx.output_filter.filter_block(out)
                        if out:
                            relay.in_send = True
                            await send({"type": "http.response.body", "body": out, "more_body": True})
                            relay.in_send = False
                            relay.sent += 1
                            ctx.response_chunks.append(out)
                            if ctx.first_byte_at is None:
                                ctx.first_byte_at = time.perf_counter()
                        meter.commit(seen)
                        if done:
                            break
                    deadline.reschedule(loop.time() + idle)
                    data = await resp.content.readany()
                    deadline.reschedule(None)
                    if not data:
                        break
                    ep.last_data_at = time.monotonic()  # evidence the replica is alive (probe_once)
                    pending += data
        except TimeoutError:
            if ep.cuts == cuts and relay.in_send:  # the watchdog: the client took nothing
                raise ClientTooSlow() from None
            if ep.cuts != cuts and ep.failed:
                failure = APIError(502, f"The model failed while generating this answer ({ep.reason}); "
                                   "the answer is incomplete.", code="engine_failed")
            elif ep.cuts != cuts:
                failure = APIError(504, f"The model's replica stopped answering ({ep.reason}); the "
                                   "answer is incomplete.", code="upstream_timeout")
            else:
                failure = APIError(504, f"The model stopped sending for {idle:g} s; the answer is "
                                   "incomplete.", code="upstream_timeout")
                self._table.eject(ep, "stream went silent")
        except _BROKEN:
            failure = APIError(502, "The model's replica closed the stream; the answer is incomplete.",
                               code="engine_failed")
            self._table.eject(ep, "stream broken", failed=True)
        finally:
            ep.waiting.discard(deadline)
            self._relays.discard(relay)
            ctx.usage = meter.delivered()
            ctx.usage_estimated = meter.estimated
        if failure is None and meter.error is not None:
            failure = APIError(502, meter.error["message"], code="engine_failed")
            self._table.eject(ep, "engine failed mid-stream", failed=True)
        elif failure is None and not done and not (isinstance(meter, ResponsesMeter) and meter.complete):
            failure = APIError(502, "The model's replica ended the stream early; the answer is "
                               "incomplete.", code="engine_failed")
        if failure is not None:
            ctx.status, ctx.error_code = failure.status, failure.code
            if meter.error is None:  # the engine said nothing: tell the client in its stream
                event = b"data: " + json.dumps(failure.body(), ensure_ascii=False).encode() + _EVENT_END
                if not await self._sent_in_time(send, {"type": "http.response.body", "body": event,
                                                       "more_body": True}):
                    raise ClientTooSlow()
                ctx.response_chunks.append(event)
        await self._before_end(ctx)
        last = b"" if isinstance(meter, ResponsesMeter) else _DONE  # Responses streams have no [DONE]
        # recorded and billed as delivered already; a client that leaves the end unread frees the slot
        await self._sent_in_time(send, {"type": "http.response.body", "body": done or last, "more_body": False})

    async def _sent_in_time(self, send: Send, message: dict[str, Any]) -> bool:
        """Send, unless the client takes nothing for `client_send_timeout_s` (then False)."""
        try:
            async with asyncio.timeout(self._settings.client_send_timeout_s):
                await send(message)
            return True
        except TimeoutError:
            return False

    async def _upstream_error(self, ctx: RequestContext, ep: Endpoint, status: int, raw: bytes) -> APIError:
        """Turn a replica's error into ours: same status and message, OpenAI vocabulary."""
        try:
            err = json.loads(raw)["error"]
            message, param, code = str(err["message"]), err.get("param"), err.get("code")
        except (ValueError, KeyError, TypeError):
            message, param, code = raw.decode("utf-8", "replace")[:500] or f"HTTP {status}", None, None
        if status == 400 and "maximum context length" in message and ep.vendor is None:
            if ctx.operation not in ("chat", "completions"):  # the /tokenize probe speaks only these
                return APIError(400, message, code="context_length_exceeded",
                                param="input" if ctx.operation in ("embeddings", "responses") else None)
            return await self._context_length_error(ctx, ep, message)
        if not isinstance(code, str) or code.isdigit():
            code = "upstream_error" if status >= 500 else "invalid_value"
        return APIError(status, message, code=code, param=param if isinstance(param, str) else None)

    async def _context_length_error(self, ctx: RequestContext, ep: Endpoint, vllm_message: str) -> APIError:
        """A context-length refusal with the exact prompt length.

        vLLM truncates over-long prompts while checking them and then reports
        only "at least N" tokens; on this rare path the router asks the same
        replica's tokenizer for the exact count.
        """
        payload = ctx.payload or {}
        requested = payload.get("max_completion_tokens") or payload.get("max_tokens")
        param = "messages" if ctx.operation == "chat" else "prompt"
        probe: dict[str, Any] = {"model": ctx.model.id}
        if ctx.operation == "chat":
            probe.update(messages=payload.get("messages"), add_generation_prompt=True)
        else:
            probe["prompt"] = payload.get("prompt")
        try:
            async with self._client().post(ep.url + "/tokenize", json=probe,
                                           headers={"Authorization": self._auth}) as resp:
                counted = await resp.json()
            prompt_tokens, limit = int(counted["count"]), int(counted["max_model_len"])
        except Exception:
            return APIError(400, vllm_message, code="context_length_exceeded", param=param)
        ask = f" plus {requested} requested output tokens" if requested else ""
        return APIError(
            400,
            f"This model's maximum context length is {limit} tokens, but the request has "
            f"{prompt_tokens} prompt tokens{ask}. Shorten the {param} or lower max_tokens.",
            code="context_length_exceeded",
            param=param,
        )


def _tls(link: VendorLink | None) -> dict[str, Any]:
    """aiohttp's `ssl` argument for a vendor with its own CA bundle; nothing otherwise."""
    return {"ssl": link.ssl} if link is not None and link.ssl is not None else {}


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds <= 3600 else None


def _responses_meter(ctx: RequestContext) -> ResponsesMeter | None:
    """The Responses API's stream meter, for a Responses stream only."""
    if ctx.operation != "responses":
        return None
    return ResponsesMeter(input_estimate=input_bytes(ctx.payload or {}))


def _usage_of(body: bytes) -> dict | None:
    try:
        usage = json.loads(body).get("usage")
    except (ValueError, AttributeError):
        return None
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:  # the Responses API's names
        usage = {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
                 "total_tokens": usage.get("total_tokens")}
    return {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
