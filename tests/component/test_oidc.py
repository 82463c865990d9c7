"""OIDC JWTs: real tokens from local key pairs, the JWKS served over TLS on 127.0.0.1 by a CA made
for the test; unsafe configurations refused; fetches rate-limited."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from serving.config import OIDCSettings
from serving.tenancy.oidc import OIDCVerifier, TokenRejected, looks_like_jwt
from tests.servers import Issuer


@pytest.fixture
def issuer():
    i = Issuer()
    yield i
    i.close()


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(issuer: Issuer, **overrides) -> OIDCSettings:
    values = dict(issuer=issuer.issuer, audience=issuer.audience, jwks_url=issuer.jwks_url,
                  ca_bundle=issuer.ca_bundle)
    return OIDCSettings(**{**values, **overrides})


def verifier(issuer: Issuer, clock=None, **overrides) -> OIDCVerifier:
    return OIDCVerifier(settings(issuer, **overrides), **({"clock": clock} if clock else {}))


def check(issuer, token, v=None):
    v = v or verifier(issuer)

    async def go():
        await v.refresh()
        return await v.verify(token)

    return asyncio.run(go())


def unsigned(header: dict, body: dict) -> str:
    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(body)}."


def test_valid_token_gives_tenant_and_user(issuer):
    p = check(issuer, issuer.token(tenant="digital-agency", user="sato@example.go.jp"))
    assert (p.tenant, p.user, p.method) == ("digital-agency", "sato@example.go.jp", "oidc")
    assert p.credential_id == f"{issuer.issuer}#sato@example.go.jp"
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
        # an EC signature under the RSA key's id: the key cannot verify this algorithm
        ({"key": ec.generate_private_key(ec.SECP256R1()), "algorithm": "ES256"}, "does not match"),
    ],
)
def test_bad_tokens_are_rejected(issuer, kwargs, reason):
    with pytest.raises(TokenRejected, match=reason):
        check(issuer, issuer.token(**kwargs))


def test_algorithm_the_key_was_not_published_for_is_rejected(issuer):
    """PS256 with the RSA key the issuer published for RS256 only."""
    with pytest.raises(TokenRejected, match="does not match"):
        check(issuer, issuer.token(algorithm="PS256"), verifier(issuer, algorithms=("RS256", "PS256")))


def test_key_without_declared_algorithm_still_needs_the_right_key_type(issuer):
    issuer.publish_without_alg()
    v = verifier(issuer, algorithms=("RS256", "PS256", "ES256"))
    assert check(issuer, issuer.token(algorithm="PS256"), v).tenant == "dev-local"  # RSA key: fits
    with pytest.raises(TokenRejected, match="does not match"):
        check(issuer, issuer.token(key=ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"), v)


@pytest.mark.parametrize("header", [
    {"alg": "none"}, {"alg": "HS256"}, {"alg": ["RS256"]}, {"alg": "RS256", "kid": ["x"]}, {"alg": "RS256", "kid": 5},
])
def test_unsigned_and_odd_headers_are_rejected(issuer, header):
    with pytest.raises(TokenRejected):
        check(issuer, unsigned({"kid": issuer.kid, **header}, {"tenant": "x", "sub": "y"}))


def test_garbage_is_rejected(issuer):
    for token in ["a.b.c", "..", "e30.e30.", unsigned({"alg": "RS256"}, {})[:-1] + "!!!"]:
        with pytest.raises(TokenRejected):
            check(issuer, token)


@pytest.mark.parametrize("algorithms", [("none",), ("HS256",), ("RS256", "HS512")])
def test_symmetric_or_no_signature_configuration_is_refused(issuer, algorithms):
    with pytest.raises(ValueError, match="asymmetric"):
        verifier(issuer, algorithms=algorithms)


def test_plain_http_jwks_url_is_refused(issuer):
    with pytest.raises(ValueError, match="https"):
        verifier(issuer, jwks_url=issuer.jwks_url.replace("https://", "http://"))


def test_unreadable_ca_bundle_is_refused(issuer, tmp_path):
    with pytest.raises(ValueError, match="ca_bundle"):
        verifier(issuer, ca_bundle=str(tmp_path / "missing.pem"))


def test_issuer_certificate_must_chain_to_the_configured_ca(issuer):
    """Without the test CA the issuer's certificate is not trusted: no keys, every token refused."""
    v = verifier(issuer, ca_bundle=None)
    with pytest.raises(Exception, match="(?i)certificate"):
        asyncio.run(v.refresh())
    with pytest.raises(TokenRejected, match="unknown key id"):
        asyncio.run(v.verify(issuer.token()))


def test_unknown_key_ids_cause_at_most_one_fetch(issuer):
    clock = Clock()
    v = verifier(issuer, clock)

    async def go():
        await v.refresh()
        start = issuer.fetches
        clock.now += 100  # long after the last fetch: one on-demand fetch is allowed
        tokens = [issuer.token(kid=f"forged-{i}") for i in range(30)]
        concurrent = await asyncio.gather(*(v.verify(t) for t in tokens), return_exceptions=True)
        after_concurrent = issuer.fetches - start
        for t in tokens:  # and the same again one by one, within the 10 s
            with pytest.raises(TokenRejected):
                await v.verify(t)
        return concurrent, after_concurrent, issuer.fetches - start

    concurrent, after_concurrent, total = asyncio.run(go())
    assert all(isinstance(r, TokenRejected) for r in concurrent)
    assert after_concurrent == 1 and total == 1


def test_failed_fetches_back_off_exponentially(issuer):
    """Failures are remembered: 1 s doubling to 60 s between attempts, on-demand ones included."""
    clock = Clock()
    v = verifier(issuer, clock)
    issuer.failing = True
    token = issuer.token()

    async def attempt_at(t: float) -> bool:
        clock.now = t
        before = issuer.fetches
        with pytest.raises(TokenRejected, match="unknown key id"):
            await v.verify(token)
        return issuer.fetches > before

    async def go():
        with pytest.raises(Exception, match="HTTP 503"):
            await v.refresh()  # t=1000, fails: next attempt 1 s later at the earliest
        fetched = {}
        # on demand, at most every 10 s; the backoff (2, 4, 8, 16, 32, 60, 60 s) decides beyond that
        for t in [1005, 1010, 1020, 1030, 1040, 1050, 1056, 1066, 1088, 1100, 1130, 1148, 1200, 1208]:
            fetched[t] = await attempt_at(t)
        return fetched

    fetched = asyncio.run(go())
    assert [t for t, did in fetched.items() if did] == [1010, 1020, 1030, 1040, 1056, 1088, 1148, 1208]


def test_key_rotation_at_the_issuer_is_picked_up(issuer):
    clock = Clock()
    v = verifier(issuer, clock)
    check(issuer, issuer.token(), v)
    issuer.rotate("key-2")
    with pytest.raises(TokenRejected, match="unknown key id"):  # within 10 s of the last fetch
        asyncio.run(v.verify(issuer.token()))
    clock.now += 11
    p = asyncio.run(v.verify(issuer.token()))
    assert p.tenant == "dev-local"


def _discovering(issuer: Issuer, clock=None) -> OIDCVerifier:
    """A verifier configured with the issuer alone: its keys are found by discovery."""
    issuer.issuer = issuer.url  # tokens' iss and the discovery document name this URL
    return OIDCVerifier(OIDCSettings(issuer=issuer.url, audience=issuer.audience,
                                     ca_bundle=issuer.ca_bundle), **({"clock": clock} if clock else {}))


def test_keys_are_discovered_from_the_issuer(issuer):
    v = _discovering(issuer)
    principal = check(issuer, issuer.token(tenant="city"), v)
    assert principal.tenant == "city"
    assert issuer.discoveries == 1 and issuer.fetches == 1
    check(issuer, issuer.token(tenant="city"), v)  # the location is kept
    assert issuer.discoveries == 1


def test_discovery_refuses_another_issuer_and_plain_http_keys(issuer):
    issuer.discovery = {"issuer": "https://evil.example", "jwks_uri": issuer.jwks_url}
    with pytest.raises(Exception, match="names issuer 'https://evil.example'"):
        check(issuer, issuer.token(), _discovering(issuer))
    issuer.discovery = {"issuer": issuer.url, "jwks_uri": issuer.jwks_url.replace("https:", "http:")}
    with pytest.raises(Exception, match="is not an https:// URL"):
        check(issuer, issuer.token(), _discovering(issuer))
    assert issuer.fetches == 0  # no key document was read from an unverified location


def test_discovery_needs_an_https_issuer():
    with pytest.raises(ValueError, match="issuer must be an https:// URL"):
        OIDCSettings(issuer="http://idp.example", audience="govllm")


def test_a_failed_key_fetch_discovers_again(issuer):
    clock = Clock()
    v = _discovering(issuer, clock)
    check(issuer, issuer.token(), v)
    issuer.failing = True
    clock.now += 1000

    async def refresh():
        await v.refresh()

    with pytest.raises(Exception, match="HTTP 503"):
        asyncio.run(refresh())
    issuer.failing = False
    clock.now += 1000
    asyncio.run(refresh())
    assert issuer.discoveries == 2  # the issuer may have moved its keys
