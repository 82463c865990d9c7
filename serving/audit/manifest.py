"""Chain manifests: each chain's head, published in the object store beside its segments.

Hash chains show a record removed from the middle, but not segments removed
from the end of a chain, nor a chain removed whole. So after every segment
upload the uploader writes `<prefix>/chains/<chain>.json`: the chain's last
segment, last sequence number and last digest, and which segments are
stored under which day. `govllm audit verify` then knows exactly which
segments a range must contain, and where the chain's last record is.

A manifest is encrypted and authenticated (AES-256-GCM, associated data
naming the chain) under a fresh data key from the audit key provider, like
the segments: forging or editing one needs the KMS key (or the key file),
not merely write access to the bucket. Replaying an older manifest of the
same chain is what the chain heads in the shared store catch.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass, field

from serving.audit import crypto
from serving.audit.segment import GENESIS

FORMAT = "govllm-audit-manifest-1"


class ManifestInvalid(ValueError):
    """A manifest that does not decrypt, authenticate or parse: treat as tampered."""


def manifest_prefix(prefix: str) -> str:
    return f"{prefix.strip('/')}/chains/"


def manifest_key(prefix: str, chain: str) -> str:
    return f"{manifest_prefix(prefix)}{chain}.json"


@dataclass
class ChainManifest:
    chain: str
    last_segment: int = -1
    last_seq: int = -1
    last_digest: str = GENESIS
    days: dict[str, list[int]] = field(default_factory=dict)  # "YYYY/MM/DD" -> [first, last] segment
    updated: float = 0.0

    def add(self, day: str, segment_no: int, last_seq: int, last_digest: str) -> None:
        """Account for one uploaded segment (idempotent: an upload may be retried)."""
        first, last = self.days.get(day, (segment_no, segment_no))
        self.days[day] = [min(first, segment_no), max(last, segment_no)]
        if segment_no >= self.last_segment:
            self.last_segment, self.last_seq, self.last_digest = segment_no, last_seq, last_digest
        self.updated = time.time()

    def segments_on(self, day: str) -> range:
        first, last = self.days.get(day, (0, -1))
        return range(first, last + 1)

    def day_of(self, segment_no: int) -> str | None:
        for day, (first, last) in self.days.items():
            if first <= segment_no <= last:
                return day
        return None


def _aad(chain: str) -> bytes:
    return f"{FORMAT}|{chain}".encode()


def encrypt_manifest(keys: crypto.DataKeys, manifest: ChainManifest) -> bytes:
    """The manifest as stored: its data key wrapped, its content encrypted and authenticated."""
    data_key, wrapped = keys.new_data_key()
    plain = json.dumps(asdict(manifest), sort_keys=True).encode()
    sealed = crypto.encrypt(data_key, plain, _aad(manifest.chain))
    return json.dumps({"format": FORMAT, "chain": manifest.chain, "data_key": wrapped,
                       "sealed": base64.b64encode(sealed).decode()}).encode()


def decrypt_manifest(keys: crypto.DataKeys, data: bytes, chain: str) -> ChainManifest:
    """Decrypt and authenticate a stored manifest of `chain`; ManifestInvalid otherwise."""
    try:
        outer = json.loads(data)
        if outer.get("format") != FORMAT:
            raise ManifestInvalid("unknown manifest format")
        plain = crypto.decrypt(keys.unwrap(outer["data_key"]), base64.b64decode(outer["sealed"]),
                               _aad(chain))
        manifest = ChainManifest(**json.loads(plain))
    except ManifestInvalid:
        raise
    except Exception as exc:
        raise ManifestInvalid(f"manifest of chain {chain} does not authenticate ({type(exc).__name__})") from None
    if manifest.chain != chain:
        raise ManifestInvalid(f"manifest names chain {manifest.chain}, stored as {chain}")
    return manifest
