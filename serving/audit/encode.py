"""One record -> the exact bytes that are chained and encrypted; never raises.

The writer commits records in batches, and a batch holds records of many
requests and tenants. A record that cannot be encoded (a client's lone
surrogate "\\ud800" in its JSON, a payload nested past the recursion limit,
NaN, a bytes value or a non-string key from a buggy caller) must not fail the
others, and must not leave its own request unaudited. So each record is
encoded on its own, and one that fails is replaced by a *substitute*: every
field that does encode, the names of the fields that did not, the error's
class, and the request and response bytes in base64, which are lossless
whatever they contain. Only I/O failures fail a request's record.
"""

from __future__ import annotations

import logging
from typing import Any

from serving.audit import segment
from serving.audit.record import finish, raw_material

logger = logging.getLogger("govllm.audit")


def encode(record: dict[str, Any], *, chain: str, seq: int, prev: str) -> bytes:
    """The canonical JSON of the record with its chain fields, or of its substitute."""
    if not isinstance(record, dict):  # a caller's bug: still one record, and no one else's loss
        record = {"type": "invalid", "value_type": type(record).__name__}
    try:
        body = finish(dict(record))
        body.update(chain=chain, seq=seq, prev_digest=prev)
        return segment.canonical(body)
    except Exception as exc:
        rid = record.get("request_id")
        logger.warning(
            "audit record %s cannot be encoded as JSON (%s); stored as a substitute with its raw bytes",
            rid if isinstance(rid, str) else "?", type(exc).__name__,
        )
        return _substitute_bytes(record, exc, chain=chain, seq=seq, prev=prev)


def substitute(record: dict[str, Any], exc: BaseException, *, chain: str, seq: int,
               prev: str) -> dict[str, Any]:
    """The record's encodable fields plus its raw bytes: the request stays exactly audited."""
    try:
        fields = finish(dict(record))
    except Exception:
        fields = {k: v for k, v in record.items() if not (isinstance(k, str) and k.startswith("_"))}
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in fields.items():
        if not isinstance(key, str):
            dropped.append(ascii(key))
            continue
        try:
            segment.canonical({key: value})
        except Exception:
            dropped.append(ascii(key)[1:-1])
            continue
        kept[key] = value
    kept.update(raw_material(record))
    kept.update(encoding_error=type(exc).__name__, dropped_fields=sorted(dropped),
                chain=chain, seq=seq, prev_digest=prev)
    return kept


def _substitute_bytes(record: dict[str, Any], exc: BaseException, *, chain: str, seq: int,
                      prev: str) -> bytes:
    try:
        return segment.canonical(substitute(record, exc, chain=chain, seq=seq, prev=prev))
    except Exception:  # cannot happen with the checks above; never lose the request regardless
        minimal = {"type": "substitute", "encoding_error": type(exc).__name__,
                   "chain": chain, "seq": seq, "prev_digest": prev, **raw_material(record)}
        rid = record.get("request_id")
        if isinstance(rid, str) and rid.isascii():
            minimal["request_id"] = rid
        return segment.canonical(minimal)
