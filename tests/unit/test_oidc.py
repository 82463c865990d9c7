"""OIDC JWTs: real RS256 tokens from a local key pair, JWKS served over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from serving.config import OIDCSettings
from serving.tenancy.oidc import OIDCVerifier, TokenRejected, looks_like_jwt
from tests.servers import Issuer


@pytest.fixture(scope="module")
def issuer():
    i = Issuer()
    yield i
    i.close()


def verifier(issuer: Issuer) -> OIDCVerifier:
    return OIDCVerifier(OIDCSettings(issuer=issuer.issuer, audience=issuer.audience, jwks_url=issuer.jwks_url))


def check(issuer, token, v=None):
    v = v or verifier(issuer)

    async def go():
        await v.refresh()
        return await v.verify(token)

    return asyncio.run(go())


def test_valid_token_gives_tenant_and_user(issuer):
    p = check(issuer, issuer.token(tenant="digital-agency", user="sato@example.go.jp"))
    assert (p.tenant, p.user, p.method) == ("digital-agency", "sato@example.go.jp", "oidc")
    assert looks_like_jwt(issuer.token()) and not looks_like_jwt("gvk_0123456789ab_x.y.z")


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"expires_in": -120}, "expired"),
        ({"audience": "someone-else"}, "audience"),
        ({"issuer": "https://evil.example"}, "issuer"),
        ({"tenant": None}, "'tenant' claim"),
        ({"key": rsa.generate_private_key(public_exponent=65537, key_size=2048)}, "invalid token"),
        ({"kid": "unknown-kid"}, "unknown key id"),
    ],
)
def test_bad_tokens_are_rejected(issuer, kwargs, reason):
    with pytest.raises(TokenRejected, match=reason):
        check(issuer, issuer.token(**kwargs))


def test_unsigned_token_is_rejected(issuer):
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": issuer.kid}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps({"tenant": "x", "sub": "y"}).encode()).rstrip(b"=")
    with pytest.raises(TokenRejected, match="algorithm"):
        check(issuer, f"{header.decode()}.{body.decode()}.")


def test_key_rotation_at_the_issuer_is_picked_up(issuer):
    v = verifier(issuer)
    check(issuer, issuer.token(), v)
    issuer.rotate("key-2")
    v._fetched_at = 0  # as if the last fetch was long ago
    p = asyncio.run(v.verify(issuer.token()))
    assert p.tenant == "dev-local"
