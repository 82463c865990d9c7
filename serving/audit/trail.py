"""The audit trail as the router uses it: spool + uploader + chain heads.

`seal(ctx)` is the router's hook before the last bytes of every response:
it queues the request's record and waits until the writer thread has it on
disk. If the record cannot be written the request fails (503 before a
response has started; a stream ends without its final event): an answer
that is not on the audit trail is never acknowledged.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from serving.audit.crypto import data_keys
from serving.audit.objectstore import object_store
from serving.audit.record import capture
from serving.audit.spool import AuditSpool
from serving.audit.uploader import Uploader
from serving.config import AuditSettings
from serving.router.errors import APIError
from serving.router.pipeline import RequestContext

logger = logging.getLogger("govllm.audit")


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
            on_uploaded=heads,
            on_pending=metrics.audit_pending if metrics else None,
            on_failure=metrics.audit_upload_failed if metrics else None,
        ).start()

    async def record(self, record: dict) -> None:
        try:
            await self.spool.append(record)
        except Exception as exc:
            raise APIError(
                503,
                "The audit trail cannot record this request right now, so it was not answered.",
                code="audit_unavailable",
            ) from exc

    async def seal(self, ctx: RequestContext) -> None:
        await self.record(capture(ctx))

    def close(self) -> None:
        self.spool.close()
        self.uploader.stop(flush=True)


def redis_heads(sync_client, key: str):
    """on_uploaded callback: remember each chain's last uploaded sequence number."""

    def record_head(chain: str, meta: dict) -> None:
        current = sync_client.hget(key, chain)
        if current is not None and json.loads(current)["last_seq"] >= meta["last_seq"]:
            return
        sync_client.hset(key, chain, json.dumps(
            {"last_seq": meta["last_seq"], "last_digest": meta.get("last_digest", ""), "time": time.time()}))

    return record_head
