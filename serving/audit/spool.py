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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.audit import crypto, segment
from serving.audit.encode import encode
from serving.audit.segment import new_chain_id

logger = logging.getLogger("govllm.audit")

_BATCH = 512
KEY_RETRY_S = 30.0  # after a failed data-key request, keep the segment open this long
SEAL_RETRY_S = 1.0  # a segment whose sealing failed is tried again this often


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


class SpoolClosed(RuntimeError):
    """The spool's writer has stopped; nothing more can be recorded through it."""


def _write_all(fd: int, data: bytes, offset: int) -> int:
    """Write everything at `offset` (positional: a rolled-back file never gets a hole)."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:] if done else data, offset + done)
    return offset + done


class AuditSpool:
    """The replica's writer thread and its chain; see the module docstring."""

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
        # chain state of the next record
        self._seq = 0
        self._prev = segment.GENESIS
        # the open segment: its fd, frames not yet written, and the last fsynced state
        self._segment_no = -1
        self._fd: int | None = None
        self._path: Path | None = None
        self._count = 0
        self._pending: list[bytes] = []  # framed records not yet written
        self._synced: tuple[int, int, str, int] = (0, 0, segment.GENESIS, 0)  # offset, seq, prev, count
        self._durable_seq = 0  # every record below this sequence number is fsynced
        self._broken = False  # a rollback could not truncate: repair before writing again
        self._unsealed: list[tuple[Path, dict]] = []  # finished segments whose sealing failed
        self._seal_retry_at = 0.0
        self._opened_at = 0.0
        self._data_key = b""
        self._next_key: tuple[bytes, dict] | None = None
        self._key_retry_at = 0.0
        self._stop = threading.Event()
        self._closed = False
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="govllm-audit-writer", daemon=True)
        self._thread.start()

    # -- request side -------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> asyncio.Future:
        """Queue a record; the future resolves once it is on disk (or fails if it cannot be)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._closed:
            fut.set_exception(SpoolClosed("the audit spool is closed"))
            return fut
        self._q.put((record, fut, loop))
        if self._closed:  # the writer stopped between the check and the put
            self._drain()
        return fut

    def append_nowait(self, record: dict[str, Any]) -> None:
        """Queue a record nobody waits for (a client that is gone, shutdown paths); never blocks."""
        self._q.put((record, None, None))
        if self._closed:
            self._drain()

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
            if self._unsealed:
                self._retry_seals()
            if self._fd is not None and time.monotonic() - self._opened_at >= self._max_s:
                self._guarded(self._rotate)
            if self._stop.is_set() and self._q.empty():
                if self._fd is not None:
                    self._guarded(self._seal)
                self._seal_retry_at = 0.0
                self._retry_seals()  # what still fails is sealed by recovery after this process
                self._closed = True
                self._drain()
                return

    def _guarded(self, step) -> None:
        """Rotation off the write path: a failure is logged and retried, the thread lives on."""
        try:
            step()
        except Exception as exc:
            logger.error("audit segment rotation failed: %s", _describe(exc))
            self._rollback()

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
                               _describe(exc), self._segment_no, KEY_RETRY_S)
                self._key_retry_at = time.monotonic() + KEY_RETRY_S
                return
        self._seal()

    def _open(self) -> None:
        """Start the next segment; its header is durable before any record goes in."""
        if self._next_key is not None:
            (data_key, wrapped), self._next_key = self._next_key, None
        else:
            data_key, wrapped = self._keys.new_data_key()
        number = self._segment_no + 1
        path = self.dir / f"{number:010d}.open"
        header = segment.header_bytes(segment.SegmentHeader(
            chain=self.chain, segment=number, first_seq=self._seq,
            created=time.time(), app=self._app, data_key=wrapped,
        ))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, header, 0)
            os.fsync(fd)
            _fsync_dir(self.dir)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._path, self._segment_no, self._data_key = fd, path, number, data_key
        self._count = 0
        self._pending = []
        self._synced = (len(header), self._seq, self._prev, 0)
        self._opened_at = time.monotonic()

    def _sync(self) -> None:
        """Write the pending frames and fsync: everything appended so far is durable."""
        if self._broken:
            self._repair()  # never seal or extend a file with a torn write at its end
        offset = self._synced[0]
        if self._pending:
            offset = _write_all(self._fd, b"".join(self._pending), offset)
        os.fsync(self._fd)
        self._pending = []
        self._synced = (offset, self._seq, self._prev, self._count)
        self._durable_seq = self._seq

    def _seal(self) -> None:
        self._sync()
        fd, path = self._fd, self._path
        self._fd = None
        os.close(fd)
        self._unsealed.append((path, {"last_seq": self._seq - 1, "last_digest": self._prev,
                                      "count": self._count}))
        self._retry_seals()

    def _retry_seals(self) -> None:
        """Seal finished segments whose sealing failed (a full disk refuses the sidecar).

        Their records are durable already; until sealed the uploader cannot take them, so
        the writer keeps trying, oldest first, and the chain is uploaded without a hole.
        """
        if time.monotonic() < self._seal_retry_at:
            return
        while self._unsealed:
            path, meta = self._unsealed[0]
            try:
                if path.exists():  # else renamed already, only the directory's fsync had failed
                    seal(path, last_seq=meta["last_seq"], last_digest=meta["last_digest"],
                         count=meta["count"])
            except OSError as exc:
                first = not meta.get("failed")
                meta["failed"] = True
                (logger.error if first else logger.debug)(
                    "sealing audit segment %s failed (%s); retrying every %.0f s", path.name,
                    _describe(exc), SEAL_RETRY_S)
                self._seal_retry_at = time.monotonic() + SEAL_RETRY_S
                return
            self._unsealed.pop(0)

    def _rollback(self) -> None:
        """After an I/O failure: forget what was not fsynced, so the file and chain agree."""
        self._pending = []
        if self._fd is None:
            return  # nothing unsynced: the last segment was sealed, or a new one never opened
        offset, self._seq, self._prev, self._count = self._synced
        try:
            os.ftruncate(self._fd, offset)
            os.fsync(self._fd)
            self._broken = False
        except OSError:
            self._broken = True

    def _repair(self) -> None:
        os.ftruncate(self._fd, self._synced[0])
        os.fsync(self._fd)
        self._broken = False

    def _write(self, batch: list) -> None:
        seqs: list[int] = []
        error: Exception | None = None
        try:
            for record, _, _ in batch:
                if self._fd is None:
                    self._open()
                # encoding never raises: a record that cannot be encoded becomes a substitute
                plain = encode(record, chain=self.chain, seq=self._seq, prev=self._prev)
                frame = crypto.encrypt(
                    self._data_key, plain, segment.aad(self.chain, self._segment_no, self._count)
                )
                self._pending.append(segment.framed(frame))
                seqs.append(self._seq)
                self._prev = segment.digest(plain)
                self._seq += 1
                self._count += 1
                if self._count >= self._max_records:
                    self._rotate()  # sealing fsyncs what the segment holds
            if self._fd is not None:
                self._sync()
        except Exception as exc:  # disk full, fsync failed, no data key: these records are lost
            logger.error("audit spool write failed: %s", _describe(exc))
            error = exc
            try:
                self._rollback()
            except Exception as again:  # the waiters below must be told whatever happens
                logger.error("audit spool rollback failed: %s", _describe(again))
                self._broken = True
        for i, (record, fut, loop) in enumerate(batch):
            durable = error is None or (i < len(seqs) and seqs[i] < self._durable_seq)
            if durable:
                self.written += 1
            if fut is not None:
                _notify(loop, fut, None if durable else error)
            elif not durable:
                rid = record.get("request_id") if isinstance(record, dict) else None
                logger.error("audit record %s (not awaited) was not written",
                             rid if isinstance(rid, str) else "?")

    def _drain(self) -> None:
        """Fail whatever is still queued once the writer has stopped (no waiter hangs)."""
        while True:
            try:
                _, fut, loop = self._q.get_nowait()
            except queue.Empty:
                return
            if fut is not None:
                _notify(loop, fut, SpoolClosed("the audit spool is closed"))

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def _describe(exc: BaseException) -> str:
    """An error for the log: its class and, for OS errors, the reason (never record content)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


def _notify(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, error: Exception | None) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, fut, error)
    except RuntimeError:  # the waiting loop has been closed: nobody is left to tell
        pass


def _resolve(fut: asyncio.Future, error: Exception | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def dead_chains(spool_dir: Path, *, skip: str | None = None) -> Iterator[Path]:
    """Chain directories whose writer is gone (nobody holds their lock), each locked while the
    caller works on it; a live writer's directory (its lock held) is passed over."""
    for chain_dir in sorted(p for p in Path(spool_dir).glob("*") if p.is_dir()):
        if chain_dir.name == skip:
            continue
        try:
            fd = os.open(chain_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer owns it
            yield chain_dir
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def recover_abandoned(spool_dir: Path) -> int:
    """Seal the open segments of chains whose writer is gone (directory not locked).

    A torn last frame (a crash mid-write) was never acknowledged: it is cut off.
    Returns how many segments were sealed.
    """
    sealed = 0
    for chain_dir in dead_chains(spool_dir):
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
    return sealed


def _truncate_to_frames(path: Path, data: bytes, n_frames: int) -> None:
    _, frames, _ = segment.read(data)
    end = segment.header_end(data) + sum(4 + len(f) for f in frames[:n_frames])
    with open(path, "r+b") as f:
        f.truncate(end)
        os.fsync(f.fileno())
