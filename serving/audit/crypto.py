"""Envelope encryption for audit records: AES-256-GCM under per-batch data keys.

Each spool segment (a batch of records) gets a fresh 256-bit data key. The
data key encrypts the records; the data key itself is stored only wrapped by
a key-encryption key that never leaves its home: a KMS key (boto3 `kms`
GenerateDataKey / Decrypt) in production, or a local key file (mode 0600) in
the embedded default. Reading records back needs the KMS key, which is the
access control for auditors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from serving.config import KmsKey, LocalKeyFile

NONCE_BYTES = 12


class DataKeys(Protocol):
    def new_data_key(self) -> tuple[bytes, dict]:
        """(plaintext 32-byte key, JSON-able wrapped form to store beside the data)."""

    def unwrap(self, wrapped: dict) -> bytes:
        """The plaintext data key of a wrapped form."""


class LocalKeyFileKeys:
    """Data keys wrapped with AES-256-GCM under a key file's 32 bytes."""

    def __init__(self, path: Path, *, create: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(f"audit key file {self.path} does not exist")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        kek = self.path.read_bytes()
        if len(kek) != 32:
            raise ValueError(f"audit key file {self.path} must hold exactly 32 bytes")
        self._kek = AESGCM(kek)
        # A fingerprint to name the key file in wrapped keys without revealing it.
        self._kek_id = hmac.new(kek, b"govllm-audit-kek-id", hashlib.sha256).hexdigest()[:16]

    def new_data_key(self) -> tuple[bytes, dict]:
        key = secrets.token_bytes(32)
        nonce = secrets.token_bytes(NONCE_BYTES)
        wrapped = nonce + self._kek.encrypt(nonce, key, b"govllm-audit-data-key")
        return key, {"type": "local", "kek_id": self._kek_id, "blob": base64.b64encode(wrapped).decode()}

    def unwrap(self, wrapped: dict) -> bytes:
        if wrapped.get("type") != "local":
            raise ValueError(f"data key was wrapped by {wrapped.get('type')}, not a local key file")
        if wrapped.get("kek_id") != self._kek_id:
            raise ValueError("data key was wrapped by a different audit key file")
        blob = base64.b64decode(wrapped["blob"])
        return self._kek.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], b"govllm-audit-data-key")


class KmsKeys:
    """Data keys from a KMS (AWS KMS or any service speaking its API)."""

    def __init__(self, settings: KmsKey):
        import boto3
        from botocore.config import Config

        self._key_id = settings.key_id
        self._kms = boto3.client(
            "kms", region_name=settings.region, endpoint_url=settings.endpoint_url,
            config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
        )

    def new_data_key(self) -> tuple[bytes, dict]:
        out = self._kms.generate_data_key(
            KeyId=self._key_id, KeySpec="AES_256", EncryptionContext={"purpose": "govllm-audit"}
        )
        return out["Plaintext"], {
            "type": "kms",
            "key_id": out.get("KeyId", self._key_id),
            "blob": base64.b64encode(out["CiphertextBlob"]).decode(),
        }

    def unwrap(self, wrapped: dict) -> bytes:
        if wrapped.get("type") != "kms":
            raise ValueError(f"data key was wrapped by {wrapped.get('type')}, not KMS")
        out = self._kms.decrypt(
            CiphertextBlob=base64.b64decode(wrapped["blob"]),
            EncryptionContext={"purpose": "govllm-audit"},
        )
        return out["Plaintext"]


def data_keys(settings: LocalKeyFile | KmsKey, *, create: bool = True) -> DataKeys:
    if isinstance(settings, KmsKey):
        return KmsKeys(settings)
    return LocalKeyFileKeys(Path(settings.path), create=create)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, frame: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(frame[:NONCE_BYTES], frame[NONCE_BYTES:], aad)
