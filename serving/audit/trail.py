"""The audit trail as the router uses it: begin and end records, spool, uploader, chain heads.

A request that goes to an engine is recorded twice. `begin(ctx)` makes the
begin record (who asks what) durable *before* the prompt is dispatched, so a
router killed with SIGKILL mid-stream still leaves the request on the trail
(verify reports it as unclosed). `end(ctx)` makes the end record (outcome,
answer) durable before the last bytes of the response, so a client that saw a
complete answer can rely on it being recorded. A request refused before
dispatch gets one complete record from `end(ctx)`. Where nobody can wait (the
client is gone, the task is being cancelled) `end_nowait(ctx)` queues the
end record without blocking or raising.

If a record cannot be made durable the request fails: 503 `audit_unavailable`
before a response has started, or a stream that ends without its final
event. An answer that is not on the audit trail is never acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from serving.audit.crypto import data_keys
from serving.audit.objectstore import object_store
from serving.audit.record import capture_begin, capture_end, capture_request
from serving.audit.spool import AuditSpool
from serving.audit.uploader import Uploader
from serving.config import AuditSettings
from serving.request import APIError, RequestContext

logger = logging.getLogger("govllm.audit")

def _unavailable() -> APIError:
    return APIError(
        503,
        "The audit trail cannot record this request right now, so it was not answered.",
        code="audit_unavailable",
    )


class AuditTrail:
    def __init__(self, settings: AuditSettings, *, app: str, chain_hint: str = "",
                 heads=None, metrics=None):
        keys = data_keys(settings.keys)
        self.spool = AuditSpool(
            Path(settings.spool_dir), keys, app=app, chain_hint=chain_hint,
            batch_max_records=settings.batch_max_records, batch_max_s=settings.batch_max_s,
        )
        self.uploader = Uploader(
            Path(settings.spool_dir),
            object_store(settings.sink, settings.keys),
            keys,
            own_chain=self.spool.chain,
            on_uploaded=heads,
            on_pending=metrics.audit_pending if metrics else None,
            on_failure=metrics.audit_upload_failed if metrics else None,
        ).start()

    async def record(self, record: dict) -> None:
        """Make a standalone record durable (feedback); 503 APIError if it cannot be."""
        try:
            await self.spool.append(record)
        except Exception as exc:
            raise _unavailable() from exc

    async def begin(self, ctx: RequestContext) -> None:
        """Make the begin record durable before dispatch; sets `ctx.audit_begun`.

        Raises the 503 `audit_unavailable` APIError if it cannot be written. If the waiting
        task is cancelled the record is still written, and `audit_begun` still set once it is
        durable; meanwhile an `end_nowait` pairs with it (an end record, not a complete one).
        """
        fut = self.spool.append(capture_begin(ctx))
        ctx.audit_begin_pending = True
        fut.add_done_callback(lambda f: _begun(ctx, f))
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            raise  # the callback settles the state once the write is done
        except Exception as exc:
            ctx.audit_begin_pending = False  # now, not in the callback: an end may follow at once
            raise _unavailable() from exc
        ctx.audit_begin_pending = False
        ctx.audit_begun = True

    async def end(self, ctx: RequestContext) -> None:
        """Make the end record (or, if never begun, the complete record) durable.

        Sets `ctx.audit_closed` once it is durable. Never queues a second end for one
        request: a repeated call waits for (or re-raises the failure of) the first.
        Raises the 503 `audit_unavailable` APIError if the record cannot be written.
        """
        if ctx.audit_closed:
            return
        fut = ctx.audit_end_write
        if fut is None:
            fut = self.spool.append(self._closing_record(ctx))
            ctx.audit_end_write = fut
            fut.add_done_callback(lambda f: _closed(ctx, f))
        elif fut is True:  # queued by end_nowait: nobody can wait for it
            return
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _unavailable() from exc
        ctx.audit_closed = True

    def end_nowait(self, ctx: RequestContext) -> None:
        """Queue the end (or complete) record without waiting; never raises, never blocks.

        For paths where nobody can wait: the client is gone, the task is being cancelled.
        Does nothing if an end record was already queued for this request.
        """
        try:
            if ctx.audit_closed or ctx.audit_end_write is not None:
                return
            ctx.audit_end_write = True
            ctx.audit_closed = True
            self.spool.append_nowait(self._closing_record(ctx))
        except Exception as exc:  # the caller is cleaning up; it must not fail here
            logger.error("audit end record of request %s could not be queued: %s",
                         ctx.request_id, type(exc).__name__)

    @staticmethod
    def _closing_record(ctx: RequestContext) -> dict[str, Any]:
        if ctx.audit_begun or ctx.audit_begin_pending:
            return capture_end(ctx)
        return capture_request(ctx)

    def close(self) -> None:
        """Shutdown: write what is queued, seal the open segment, upload what is sealed."""
        self.spool.close()
        self.uploader.stop(flush=True)


def _begun(ctx: RequestContext, fut: asyncio.Future) -> None:
    ctx.audit_begin_pending = False
    if not fut.cancelled() and fut.exception() is None:
        ctx.audit_begun = True


def _closed(ctx: RequestContext, fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        ctx.audit_closed = True


def redis_heads(sync_client, key: str):
    """on_uploaded callback: each chain's last uploaded segment, sequence number and digest."""

    def record_head(chain: str, meta: dict) -> None:
        current = sync_client.hget(key, chain)
        if current is not None and json.loads(current)["last_seq"] >= meta["last_seq"]:
            return
        sync_client.hset(key, chain, json.dumps(
            {"last_seq": meta["last_seq"], "last_digest": meta.get("last_digest", ""),
             "last_segment": meta.get("last_segment"), "time": time.time()}))

    return record_head
