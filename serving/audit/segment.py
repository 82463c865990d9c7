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
import secrets
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAGIC = b"GVAUDIT1"
_LEN = struct.Struct(">I")
GENESIS = "0" * 64  # prev_digest of a chain's first record


_CHAIN_STAMP = "%Y%m%dT%H%M%SZ"


def new_chain_id(hint: str = "") -> str:
    """A chain id that starts with its creation time (UTC), so a verifier knows where it begins.

    From the creation time alone `govllm audit verify` can tell that a chain created inside
    the checked range must start there with segment 0, and how far back to look for the
    predecessor of a chain's first segment in the range.
    """
    stamp = time.strftime(_CHAIN_STAMP, time.gmtime(time.time()))
    safe = "".join(c for c in hint if (c.isascii() and c.isalnum()) or c in "-_")[:40]
    return f"{stamp}-{safe + '-' if safe else ''}{secrets.token_hex(4)}"


def chain_created(chain: str) -> float | None:
    """The creation time of a chain named by `new_chain_id`, or None for any other name."""
    try:
        return datetime.strptime(chain[:16], _CHAIN_STAMP).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


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
    """The record's bytes as chained and encrypted: sorted keys, UTF-8, strict JSON.

    Strict: NaN and infinities raise (other JSON readers reject them), and so do lone
    surrogates (not encodable as UTF-8); the writer stores such records as substitutes.
    """
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode()


def digest(record_bytes: bytes) -> str:
    return hashlib.sha256(record_bytes).hexdigest()


def aad(chain: str, segment: int, index: int) -> bytes:
    return f"{chain}|{segment}|{index}".encode()


def framed(frame: bytes) -> bytes:
    """A frame with its length prefix, as it is appended to a segment."""
    return _LEN.pack(len(frame)) + frame


def header_bytes(header: SegmentHeader) -> bytes:
    body = header.to_json()
    return MAGIC + _LEN.pack(len(body)) + body


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
