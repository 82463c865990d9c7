"""API keys: issued once, stored only as salted hashes, verified per request.

Keys are 256-bit random secrets, so a single salted SHA-256 is the right
hash: brute force is already infeasible, and a deliberately slow KDF (bcrypt,
scrypt) would add milliseconds to every request for no security gain. The
key id in front of the secret lets verification look the record up in O(1)
without revealing anything about the secret.

Format: ``gvk_<key_id>_<secret>``; ``key_id`` is 12 hex digits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KEY_PREFIX = "gvk"


@dataclass(frozen=True)
class Principal:
    """Who is calling: carried through the request path into logs and audit."""

    tenant: str
    user: str
    key_id: str


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


@dataclass
class KeyFile:
    """The on-disk store: tenants known locally and their key records."""

    keys: list[KeyRecord] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "keys": [asdict(k) for k in self.keys]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> KeyFile:
        data = json.loads(text)
        return cls(keys=[KeyRecord(**k) for k in data.get("keys", [])])


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def split_key(presented: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1], parts[2]


def issue_key(tenant: str, user: str, description: str = "") -> tuple[str, KeyRecord]:
    """A new key and the record to store; the plaintext is returned exactly once."""
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
    return Principal(tenant=record.tenant, user=record.user, key_id=key_id)


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


def load_key_file(path: Path) -> KeyFile:
    try:
        return KeyFile.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return KeyFile()


class FileKeyStore:
    """Key records from a JSON file, re-read when its modification time changes.

    Re-reading on change means a key created or revoked with the CLI takes
    effect on every router replica that shares the file within one reload
    interval, without a restart.
    """

    def __init__(self, path: Path):
        self._path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._records: dict[str, KeyRecord] = {}
        self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed; True when the records were replaced."""
        try:
            st = self._path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        keys = load_key_file(self._path).keys if stamp else []
        self._records = {k.key_id: k for k in keys}
        self._stamp = stamp
        return True

    def authenticate(self, presented: str) -> Principal | None:
        return verify(presented, self._records)


DEV_TENANT = "dev-local"
DEV_USER = "developer"


def ensure_dev_key(*, key_store_path: Path, key_path: Path) -> tuple[Path, bool]:
    """Create the development tenant's key on first start.

    Returns the path of the plaintext key file and whether it was created now.
    The key file and the hash store are both 0600. An existing dev key is kept
    as long as its hash is still in the store, so restarts do not rotate it.
    """
    store_path = key_store_path
    store = load_key_file(store_path)
    if key_path.is_file():
        existing = key_path.read_text(encoding="utf-8").strip()
        if verify(existing, {k.key_id: k for k in store.keys}) is not None:
            return key_path, False
    plaintext, record = issue_key(DEV_TENANT, DEV_USER, description="development key (make serve)")
    store.keys.append(record)
    write_private(store_path, store.to_json())
    write_private(key_path, plaintext + "\n")
    return key_path, True
