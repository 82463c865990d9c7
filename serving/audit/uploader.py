"""Moves sealed spool segments to the object store, and keeps retrying while it is down.

Runs on its own thread in each router replica. A segment is deleted from the
spool only after the object store accepted it and the chain's manifest (its
head, see manifest.py) was updated beside it, so an outage only delays
upload: the spool grows and the backlog shows in `govllm_audit_pending_records`.
After that the chain's head is also recorded in the shared store
(`on_uploaded`, best effort), a second witness `govllm audit verify` compares
with the manifest.

Each uploader uploads its own replica's chain and the chains of replicas
that died (directories nobody holds the lock of); it takes a dead chain's
lock while it works on it, so two uploaders on a node never interleave the
uploads or the manifest of one chain.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving.audit import crypto, segment
from serving.audit.manifest import ChainManifest, decrypt_manifest, encrypt_manifest
from serving.audit.manifest import manifest_key as manifest_object_key
from serving.audit.objectstore import ObjectStore, object_key, segment_day
from serving.audit.spool import dead_chains, recover_abandoned

logger = logging.getLogger("govllm.audit")


def segment_head(data: bytes, keys: crypto.DataKeys, meta: dict | None,
                 previous: ChainManifest | None) -> dict:
    """A sealed segment's last sequence number and digest, from its sidecar or its content.

    Segments sealed by recovery (their writer died) have no digest in the sidecar, and a
    sidecar may be lost in a crash; the segment itself always tells, given the key.
    """
    header, frames, _ = segment.read(data)
    last_seq = header.first_seq + len(frames) - 1
    if meta and meta.get("last_digest") and meta.get("last_seq") == last_seq:
        return {"count": len(frames), "last_seq": last_seq, "last_digest": meta["last_digest"]}
    if frames:
        data_key = keys.unwrap(header.data_key)
        aad = segment.aad(header.chain, header.segment, len(frames) - 1)
        digest = segment.digest(crypto.decrypt(data_key, frames[-1], aad))
    elif previous is not None and previous.last_seq == last_seq:
        digest = previous.last_digest
    else:
        digest = segment.GENESIS if header.first_seq == 0 else ""
    return {"count": len(frames), "last_seq": last_seq, "last_digest": digest}


class Uploader:
    def __init__(
        self,
        spool_dir: Path,
        store: ObjectStore,
        keys: crypto.DataKeys,
        *,
        own_chain: str | None = None,
        on_uploaded: Callable[[str, dict], None] | None = None,
        on_pending: Callable[[int], None] | None = None,
        on_failure: Callable[[], None] | None = None,
        interval_s: float = 1.0,
    ):
        self._dir = Path(spool_dir)
        self._store = store
        self._keys = keys
        self._own_chain = own_chain
        self._on_uploaded = on_uploaded
        self._on_pending = on_pending
        self._on_failure = on_failure
        self._interval_s = interval_s
        self._manifests: dict[str, ChainManifest] = {}
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
        """Upload every sealed segment this uploader may take; returns how many went up.

        Raises on store errors (the rest waits for the next round).
        """
        recover_abandoned(self._dir)
        done = 0
        if self._own_chain is not None and (self._dir / self._own_chain).is_dir():
            done += self._upload_chain(self._dir / self._own_chain)
        # a live replica's chain is its own uploader's; a dead one's is locked while taken
        for chain_dir in dead_chains(self._dir, skip=self._own_chain):
            done += self._upload_chain(chain_dir)
            _remove_if_finished(chain_dir)
        return done

    def _manifest(self, chain: str) -> ChainManifest:
        if chain not in self._manifests:
            data = self._store.get_if_exists(manifest_object_key(self._store.prefix, chain))
            self._manifests[chain] = (decrypt_manifest(self._keys, data, chain) if data is not None
                                      else ChainManifest(chain=chain))
        return self._manifests[chain]

    def _upload_chain(self, chain_dir: Path) -> int:
        done = 0
        for sealed in sorted(chain_dir.glob("*.sealed")):
            meta_path = sealed.with_suffix(".meta")
            data = sealed.read_bytes()
            header, _, _ = segment.read(data)
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = None  # lost in a crash: the segment itself tells
            manifest = self._manifest(header.chain)
            head = segment_head(data, self._keys, meta, manifest)
            key = object_key(self._store.prefix, header.created, header.chain, header.segment)
            self._store.put(
                key, data,
                {"chain": header.chain, "segment": str(header.segment),
                 "first-seq": str(header.first_seq), "records": str(head["count"]),
                 "training-use": "prohibited"},
            )
            updated = ChainManifest(**{**manifest.__dict__, "days": dict(manifest.days)})
            updated.add(segment_day(header.created), header.segment, head["last_seq"], head["last_digest"])
            self._store.put(manifest_object_key(self._store.prefix, header.chain),
                            encrypt_manifest(self._keys, updated), {"chain": header.chain})
            self._manifests[header.chain] = updated
            if self._on_uploaded is not None:
                try:
                    self._on_uploaded(header.chain, {**head, "last_segment": updated.last_segment})
                except Exception as exc:  # the manifest is the record; this is a second witness
                    logger.warning("recording audit chain head failed: %s", type(exc).__name__)
            sealed.unlink()
            meta_path.unlink(missing_ok=True)
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
                logger.warning("audit upload failed (will retry in %.0fs): %s: %s",
                               backoff, type(exc).__name__, exc)
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
                logger.warning("final audit upload failed; segments stay in the spool: %s: %s",
                               type(exc).__name__, exc)


#: A dead chain's emptied directory is removed only when this old, so a replica that is just
#: creating its directory (mkdir, then lock) never has it removed under it.
_REMOVE_AFTER_S = 600.0


def _remove_if_finished(chain_dir: Path) -> None:
    """Remove a dead chain's directory once everything in it is uploaded (lock held by caller)."""
    try:
        if time.time() - chain_dir.stat().st_mtime < _REMOVE_AFTER_S:
            return
        if any(p.name != "LOCK" for p in chain_dir.iterdir()):
            return
        (chain_dir / "LOCK").unlink()
        chain_dir.rmdir()
    except OSError:
        pass  # another uploader got there first, or something new appeared: try next round
