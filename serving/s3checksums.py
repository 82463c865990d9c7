"""Which integrity checksums boto3 sends to an S3-compatible store, per sink.

boto3/botocore >= 1.36 compute a CRC checksum for every upload and send it (as a trailer of
an aws-chunked body for streamed uploads) and validate response checksums by default
("when_supported"). Several S3-compatible services reject or mangle such requests
(boto/boto3 issue 4392). "when_required" sends a checksum only where the operation demands one
(e.g. DeleteObjects), which every S3-compatible service accepts.

`auto`, the default of every sink, means: "when_required" when the client talks to an
explicit endpoint (a non-AWS profile: `endpoint_url`, or boto's own `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL`), boto's default "when_supported" on AWS itself. The object's own integrity
does not rest on these checksums: weights carry a SHA-256 manifest, audit segments AES-GCM tags.
"""

from __future__ import annotations

import os
from typing import Literal

ChecksumMode = Literal["auto", "when_supported", "when_required"]
CHECKSUM_MODES: tuple[str, ...] = ("auto", "when_supported", "when_required")


def resolve(mode: ChecksumMode, endpoint_url: str | None) -> str:
    """The botocore setting for `mode` on a client with this endpoint (None: boto's lookup)."""
    if mode not in CHECKSUM_MODES:
        raise ValueError(f"checksums must be one of {', '.join(CHECKSUM_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode
    explicit = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return "when_required" if explicit else "when_supported"


def client_config(mode: ChecksumMode, endpoint_url: str | None) -> dict[str, str]:
    """Keyword arguments for botocore.config.Config."""
    value = resolve(mode, endpoint_url)
    return {"request_checksum_calculation": value, "response_checksum_validation": value}
