"""The durable local spool: audit records reach disk before the response completes.

One writer thread per router replica takes records from a queue, assembles
streamed answers, extends the replica's hash chain, encrypts each record
under the segment's data key, appends it, and fsyncs once per batch (group
commit); only then are the waiting requests released. So the final bytes of
a response are sent only after its record is durable, while the request
path itself never does I/O or cryptography: it enqueues and awaits.

Each replica writes its own chain in its own directory, locked with flock
while the replica lives. A segment is sealed (renamed `.sealed`, with a
sidecar `.meta`) when it holds `batch_max_records` records or is
`batch_max_s` old; the uploader moves sealed segments to the object store.
Segments of a replica that died are sealed by whichever uploader finds the
directory unlocked, so nothing a crashed replica acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from serving.audit import crypto, segment
from serving.audit.record import finish

logger = logging.getLogger("govllm.audit")

_BATCH = 512
KEY_RETRY_S = 30.0  # after a failed data-key request, keep the segment open this long


def new_chain_id(hint: str = "") -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    safe = "".join(c for c in hint if c.isalnum() or c in "-_")[:40]
    return f"{stamp}-{safe + '-' if safe else ''}{secrets.token_hex(4)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(open_path: Path, *, last_seq: int, last_digest: str, count: int) -> Path:
    """Rename a finished segment to `.sealed` and write its sidecar metadata."""
    base = open_path.with_suffix("")
    meta = base.with_suffix(".meta")
    meta.write_text(json.dumps({"count": count, "last_seq": last_seq, "last_digest": last_digest}))
    sealed = base.with_suffix(".sealed")
    os.replace(open_path, sealed)
    _fsync_dir(open_path.parent)
    return sealed


class AuditSpool:
    def __init__(
        self,
        spool_dir: Path,
        keys: crypto.DataKeys,
        *,
        app: str,
        chain_hint: str = "",
        batch_max_records: int = 1000,
        batch_max_s: float = 5.0,
    ):
        self.chain = new_chain_id(chain_hint)
        self.dir = Path(spool_dir) / self.chain
        self.dir.mkdir(parents=True, exist_ok=False)
        self._lock_fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._keys = keys
        self._app = app
        self._max_records = batch_max_records
        self._max_s = batch_max_s
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._seq = 0
        self._prev = segment.GENESIS
        self._segment_no = -1
        self._file = None
        self._path: Path | None = None
        self._count = 0
        self._opened_at = 0.0
        self._data_key = b""
        self._next_key: tuple[bytes, dict] | None = None
        self._key_retry_at = 0.0
        self._stop = threading.Event()
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="govllm-audit-writer", daemon=True)
        self._thread.start()

    # -- request side -------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> asyncio.Future:
        """Queue a record; the future resolves once it is on disk (or fails if it cannot be)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((record, fut, loop))
        return fut

    def append_nowait(self, record: dict[str, Any]) -> None:
        """Queue a record nobody waits for (used off the event loop, e.g. in tests)."""
        self._q.put((record, None, None))

    # -- writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = []
            try:
                batch.append(self._q.get(timeout=0.2))
                while len(batch) < _BATCH:
                    batch.append(self._q.get_nowait())
            except queue.Empty:
                pass
            if batch:
                self._write(batch)
            if self._file is not None and time.monotonic() - self._opened_at >= self._max_s:
                self._rotate()
            if self._stop.is_set() and self._q.empty():
                if self._file is not None:
                    self._seal()
                return

    def _rotate(self) -> None:
        """Seal the current segment once the next one's data key is in hand.

        If the key service is unreachable the current segment simply stays open and
        keeps taking records (it grows past its limits) until a key can be had, so a
        KMS outage does not stop auditing.
        """
        if self._next_key is None:
            if time.monotonic() < self._key_retry_at:
                return
            try:
                self._next_key = self._keys.new_data_key()
            except Exception as exc:
                logger.warning("no new audit data key (%s); segment %d stays open, retrying in %.0f s",
                               exc, self._segment_no, KEY_RETRY_S)
                self._key_retry_at = time.monotonic() + KEY_RETRY_S
                return
        self._seal()

    def _open(self) -> None:
        self._segment_no += 1
        if self._next_key is not None:
            (self._data_key, wrapped), self._next_key = self._next_key, None
        else:
            self._data_key, wrapped = self._keys.new_data_key()
        self._path = self.dir / f"{self._segment_no:010d}.open"
        self._file = open(self._path, "wb")
        segment.write_header(
            self._file,
            segment.SegmentHeader(
                chain=self.chain, segment=self._segment_no, first_seq=self._seq,
                created=time.time(), app=self._app, data_key=wrapped,
            ),
        )
        self._count = 0
        self._opened_at = time.monotonic()

    def _seal(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        seal(self._path, last_seq=self._seq - 1, last_digest=self._prev, count=self._count)
        self._file = None

    def _write(self, batch: list) -> None:
        try:
            for record, _, _ in batch:
                if self._file is None:
                    self._open()
                body = finish(dict(record))
                body["chain"] = self.chain
                body["seq"] = self._seq
                body["prev_digest"] = self._prev
                plain = segment.canonical(body)
                frame = crypto.encrypt(
                    self._data_key, plain, segment.aad(self.chain, self._segment_no, self._count)
                )
                segment.write_frame(self._file, frame)
                self._prev = segment.digest(plain)
                self._seq += 1
                self._count += 1
                if self._count >= self._max_records:
                    self._rotate()  # sealing fsyncs what the segment holds
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self.written += len(batch)
            error = None
        except Exception as exc:  # disk full, KMS down: the waiting requests must know
            logger.exception("audit spool write failed")
            error = exc
        for _, fut, loop in batch:
            if fut is not None:
                loop.call_soon_threadsafe(_resolve, fut, error)

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def _resolve(fut: asyncio.Future, error: Exception | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def recover_abandoned(spool_dir: Path) -> int:
    """Seal the open segments of chains whose writer is gone (directory not locked).

    A torn last frame (a crash mid-write) was never acknowledged: it is cut off.
    Returns how many segments were sealed.
    """
    sealed = 0
    for chain_dir in sorted(p for p in Path(spool_dir).glob("*") if p.is_dir()):
        lock = chain_dir / "LOCK"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer owns it
            for open_path in sorted(chain_dir.glob("*.open")):
                data = open_path.read_bytes()
                try:
                    header, frames, clean = segment.read(data)
                except segment.SegmentCorrupt:
                    logger.error("abandoned audit segment %s is unreadable; kept for inspection", open_path)
                    continue
                if not clean:
                    _truncate_to_frames(open_path, data, len(frames))
                seal(open_path, last_seq=header.first_seq + len(frames) - 1, last_digest="", count=len(frames))
                sealed += 1
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    return sealed


def _truncate_to_frames(path: Path, data: bytes, n_frames: int) -> None:
    _, frames, _ = segment.read(data)
    end = segment.header_end(data) + sum(4 + len(f) for f in frames[:n_frames])
    with open(path, "r+b") as f:
        f.truncate(end)
        os.fsync(f.fileno())
