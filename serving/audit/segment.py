"""The audit segment format: one encrypted, hash-chained batch of records.

    b"GVAUDIT1" | u32 header length | header JSON | (u32 frame length | frame)*

The header names the chain, the segment number, the first sequence number,
the creation time and the wrapped data key. Each frame is
nonce || AES-256-GCM(record JSON) with associated data
"<chain>|<segment>|<index in segment>", so a frame moved, dropped or altered
fails authentication. Each record carries its sequence number and the
SHA-256 digest of the previous record (the chain), so records deleted across
segments, or whole segments deleted, show up as gaps or broken links.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

MAGIC = b"GVAUDIT1"
_LEN = struct.Struct(">I")
GENESIS = "0" * 64  # prev_digest of a chain's first record


class SegmentCorrupt(ValueError):
    """The bytes are not a well-formed segment."""


@dataclass
class SegmentHeader:
    chain: str
    segment: int
    first_seq: int
    created: float
    app: str
    data_key: dict

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def digest(record_bytes: bytes) -> str:
    return hashlib.sha256(record_bytes).hexdigest()


def aad(chain: str, segment: int, index: int) -> bytes:
    return f"{chain}|{segment}|{index}".encode()


def write_header(f: BinaryIO, header: SegmentHeader) -> None:
    body = header.to_json()
    f.write(MAGIC + _LEN.pack(len(body)) + body)


def write_frame(f: BinaryIO, frame: bytes) -> None:
    f.write(_LEN.pack(len(frame)) + frame)


def read(data: bytes) -> tuple[SegmentHeader, list[bytes], bool]:
    """Header, frames, and whether the data ended cleanly (a crash can leave a torn last frame)."""
    if not data.startswith(MAGIC):
        raise SegmentCorrupt("not an audit segment (bad magic)")
    pos = len(MAGIC)
    if len(data) < pos + 4:
        raise SegmentCorrupt("truncated header")
    (hlen,) = _LEN.unpack_from(data, pos)
    pos += 4
    try:
        header = SegmentHeader(**json.loads(data[pos : pos + hlen]))
    except (ValueError, TypeError) as exc:
        raise SegmentCorrupt(f"unreadable header: {exc}") from None
    pos += hlen
    frames: list[bytes] = []
    while pos < len(data):
        if len(data) < pos + 4:
            return header, frames, False
        (flen,) = _LEN.unpack_from(data, pos)
        if len(data) < pos + 4 + flen:
            return header, frames, False
        frames.append(data[pos + 4 : pos + 4 + flen])
        pos += 4 + flen
    return header, frames, True


def header_end(data: bytes) -> int:
    """Offset of the first frame."""
    (hlen,) = _LEN.unpack_from(data, len(MAGIC))
    return len(MAGIC) + 4 + hlen
