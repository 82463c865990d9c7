"""API keys: issued once, stored only as salted hashes, verified per request.

Keys are 256-bit random secrets, so a single salted SHA-256 is the right
hash: brute force is already infeasible, and a deliberately slow KDF (bcrypt,
scrypt) would add milliseconds to every request for no security gain. The
key id in front of the secret lets verification look the record up in O(1)
without revealing anything about the secret.

Format: ``gvk_<key_id>_<secret>``; ``key_id`` is 12 hex digits. Records live
in the shared store (serving/tenancy/keystore.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from serving.request import Principal

KEY_PREFIX = "gvk"


@dataclass
class KeyRecord:
    key_id: str
    tenant: str
    user: str
    salt: str
    digest: str
    created_at: float
    revoked_at: float | None = None
    description: str = ""
    priority: str | None = None  # a lower admission class than the tenant's (docs/scheduling.md)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyRecord:
        """Parse a stored record; ValueError if it is not one verification can rely on.

        Checked field by field so that a damaged record fails here, where the key cache can
        skip it, and never later inside `verify` on the request path.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        unknown = set(data) - _FIELD_TYPES.keys()
        missing = _REQUIRED - set(data)
        if unknown or missing:
            raise ValueError(f"unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
        for name, value in data.items():
            if not isinstance(value, _FIELD_TYPES[name]) or isinstance(value, bool):
                raise ValueError(f"field {name!r} has the wrong type")
        for name in ("salt", "digest"):  # hex, or hashing and comparing would fail per request
            try:
                bytes.fromhex(data[name])
            except ValueError:
                raise ValueError(f"field {name!r} is not hex") from None
        return cls(**data)

    def public(self) -> dict:
        """What listing a key shows: never the salt or digest."""
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "user": self.user,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "description": self.description,
            "priority": self.priority,
        }


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "key_id": str, "tenant": str, "user": str, "salt": str, "digest": str,
    "created_at": (int, float), "revoked_at": (int, float, type(None)), "description": str,
    "priority": (str, type(None)),
}
_REQUIRED = {"key_id", "tenant", "user", "salt", "digest", "created_at"}


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def split_key(presented: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1], parts[2]


def issue_key(tenant: str, user: str, description: str = "",
              priority: str | None = None) -> tuple[str, KeyRecord]:
    """A new key and the record to store; the plaintext is returned exactly once.

    `priority`: an admission class below the tenant's for every request made with this key
    (e.g. a batch job's key); None keeps the tenant's class.
    """
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    record = KeyRecord(
        key_id=key_id,
        tenant=tenant,
        user=user,
        salt=salt,
        digest=_digest(salt, secret),
        created_at=time.time(),
        description=description,
        priority=priority,
    )
    return f"{KEY_PREFIX}_{key_id}_{secret}", record


def verify(presented: str, records: dict[str, KeyRecord]) -> Principal | None:
    parsed = split_key(presented)
    if parsed is None:
        return None
    key_id, secret = parsed
    record = records.get(key_id)
    if record is None or record.revoked_at is not None:
        return None
    if not hmac.compare_digest(record.digest, _digest(record.salt, secret)):
        return None
    return Principal(tenant=record.tenant, user=record.user, method="api_key", credential_id=key_id,
                     priority=record.priority)


def write_private(path: Path, text: str) -> None:
    """Atomically write `text` readable by the owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
