"""Moves sealed spool segments to the object store, and keeps retrying while it is down.

Runs on its own thread in each router replica. A segment is deleted from the
spool only after the object store accepted it, so an outage only delays
upload: the spool grows and the backlog shows in `govllm_audit_pending_records`.
After each upload the chain's head (last sequence number and digest) is
recorded in the shared store, so `govllm audit verify` can tell a chain whose
last objects were deleted from one that simply ended.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from serving.audit import segment
from serving.audit.objectstore import ObjectStore, object_key
from serving.audit.spool import recover_abandoned

logger = logging.getLogger("govllm.audit")


class Uploader:
    def __init__(
        self,
        spool_dir: Path,
        store: ObjectStore,
        *,
        on_uploaded: Callable[[str, dict], None] | None = None,
        on_pending: Callable[[int], None] | None = None,
        on_failure: Callable[[], None] | None = None,
        interval_s: float = 1.0,
    ):
        self._dir = Path(spool_dir)
        self._store = store
        self._on_uploaded = on_uploaded
        self._on_pending = on_pending
        self._on_failure = on_failure
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.uploaded = 0
        self._thread = threading.Thread(target=self._run, name="govllm-audit-uploader", daemon=True)

    def start(self) -> Uploader:
        self._thread.start()
        return self

    def pending(self) -> int:
        total = 0
        for meta in self._dir.glob("*/*.meta"):
            try:
                total += json.loads(meta.read_text())["count"]
            except (OSError, ValueError, KeyError):
                pass
        return total

    def upload_once(self) -> int:
        """Upload every sealed segment; returns how many went up. Raises on store errors."""
        recover_abandoned(self._dir)
        done = 0
        for sealed in sorted(self._dir.glob("*/*.sealed")):
            meta_path = sealed.with_suffix(".meta")
            data = sealed.read_bytes()
            header, _, _ = segment.read(data)
            meta = json.loads(meta_path.read_text())
            key = object_key(self._store.prefix, header.created, header.chain, header.segment)
            self._store.put(
                key, data,
                {"chain": header.chain, "segment": str(header.segment),
                 "first-seq": str(header.first_seq), "records": str(meta["count"]),
                 "training-use": "prohibited"},
            )
            if self._on_uploaded is not None:
                try:
                    self._on_uploaded(header.chain, meta)
                except Exception as exc:  # the head is a safety net, not a requirement
                    logger.warning("recording audit chain head failed: %s", exc)
            sealed.unlink()
            meta_path.unlink()
            self.uploaded += 1
            done += 1
        return done

    def _run(self) -> None:
        backoff = self._interval_s
        while not self._stop.is_set():
            try:
                self.upload_once()
                backoff = self._interval_s
            except Exception as exc:
                logger.warning("audit upload failed (will retry in %.0fs): %s", backoff, exc)
                if self._on_failure is not None:
                    self._on_failure()
                backoff = min(backoff * 2, 30.0)
            if self._on_pending is not None:
                self._on_pending(self.pending())
            self._stop.wait(backoff)

    def stop(self, *, flush: bool = True, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if flush:
            try:
                self.upload_once()
            except Exception as exc:
                logger.warning("final audit upload failed; segments stay in the spool: %s", exc)
