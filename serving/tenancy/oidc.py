"""OIDC bearer tokens: JWTs signed by the government identity provider.

Only asymmetric algorithms are accepted and the signing keys (JWKS) only come
over HTTPS (serving/config/oidc_rules.py says why); a configuration that
asks for less is refused when the verifier is built. `auth.oidc.ca_bundle`
names the CAs to trust for a private PKI.

Without `auth.oidc.jwks_url` the keys' location is discovered (OpenID Connect
Discovery 1.0): the issuer's `/.well-known/openid-configuration` must name
the configured issuer exactly and an https `jwks_uri`. The location is kept
until a key fetch fails, then discovered again (an issuer that moved its keys).

The keys are fetched asynchronously and cached. Fetching is rate-limited so
that no stream of tokens can turn the router into a load generator against
the identity provider, nor stall requests behind it:

* one fetch at a time: callers that need keys while a fetch runs wait for it;
* a token naming an unknown key id (rotation at the issuer) triggers a fetch
  at most every 10 s;
* a failed fetch is remembered and the next one waits 1 s, doubling to 60 s,
  background refreshes included; tokens meanwhile use the keys already held.

Verification itself (signature, `exp`/`nbf`, `iss`, `aud`) is local and takes
microseconds. Every way a token can be wrong, including a key of the wrong
type for its `alg`, answers `TokenRejected` (401). Tenant and user come from
configurable claims; a token without them is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from serving.config import OIDCSettings
from serving.config.oidc_rules import oidc_problems
from serving.request import Principal

logger = logging.getLogger("govllm.oidc")

ON_DEMAND_MIN_INTERVAL_S = 10.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
MAX_JWKS_BYTES = 1024 * 1024
FETCH_TIMEOUT_S = 10.0
DISCOVERY_PATH = "/.well-known/openid-configuration"

#: Key type (and curve) each accepted algorithm needs.
_KEY_TYPES = {
    **{a: ("RSA", None) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


class TokenRejected(Exception):
    """The token is not acceptable; the message says why (safe to show the caller)."""


class JWKSFetchFailed(Exception):
    """The issuer's key document could not be fetched or read."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("gvk_")


@dataclass(frozen=True)
class _Key:
    jwk: jwt.PyJWK
    kty: str
    crv: str | None
    alg: str | None  # the algorithm the issuer declared for the key, if any

    def fits(self, alg: str) -> bool:
        kty, crv = _KEY_TYPES.get(alg, (None, None))
        if self.alg is not None and self.alg != alg:
            return False
        return self.kty == kty and (crv is None or self.crv == crv)


def _parse_jwks(document: Any) -> dict[str, _Key]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JWKSFetchFailed("the JWKS document has no 'keys' list")
    keys: dict[str, _Key] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        kid, kty = entry.get("kid", ""), entry.get("kty")
        if not isinstance(kid, str) or kty not in ("RSA", "EC", "OKP") or entry.get("use", "sig") != "sig":
            continue  # symmetric or encryption keys never verify a token here
        try:
            key = jwt.PyJWK(entry)
        except Exception as exc:
            logger.warning("ignoring unusable JWKS entry %r: %s", kid[:64], type(exc).__name__)
            continue
        alg = entry.get("alg")
        keys[kid] = _Key(key, kty, entry.get("crv"), alg if isinstance(alg, str) else None)
    return keys


class OIDCVerifier:
    """Verifies the issuer's JWTs; refuses at construction a configuration that is unsafe.

    `clock` is monotonic seconds (injectable, so tests step through the rate limits).
    """

    def __init__(self, settings: OIDCSettings, *, clock: Callable[[], float] = time.monotonic):
        problems = oidc_problems(settings.jwks_url, settings.algorithms, issuer=settings.issuer)
        if problems:
            raise ValueError("; ".join(problems))
        self._s = settings
        self._jwks_url: str | None = settings.jwks_url  # None until discovered
        self._clock = clock
        self._ssl = self._tls_context(settings.ca_bundle)
        self._keys: dict[str, _Key] = {}
        self._inflight: asyncio.Task | None = None
        self._attempted_at = float("-inf")
        self._failures = 0
        self._retry_at = float("-inf")
        self.fetches = 0  # fetches started, for tests and diagnostics

    @staticmethod
    def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
        if ca_bundle is None:
            return ssl.create_default_context()
        try:
            return ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"auth.oidc.ca_bundle {ca_bundle} is not a readable PEM file of CAs: "
                             f"{exc}") from None

    async def refresh(self) -> None:
        """Fetch the keys now, or wait for the fetch already running; raises if it fails."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            keys = _parse_jwks(await self._download())
        except Exception as exc:
            self._failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures - 1))
            self._retry_at = self._clock() + delay
            logger.warning("JWKS fetch from %s failed (%s); next attempt in %.0f s at the earliest",
                           self._jwks_url or self._discovery_url,
                           exc if isinstance(exc, JWKSFetchFailed) else type(exc).__name__, delay)
            if self._s.jwks_url is None:
                self._jwks_url = None  # discover again: the issuer may have moved its keys
            raise
        self._keys = keys
        self._failures, self._retry_at = 0, float("-inf")

    @property
    def _discovery_url(self) -> str:
        return self._s.issuer.rstrip("/") + DISCOVERY_PATH

    async def _download(self) -> Any:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        connector = aiohttp.TCPConnector(ssl=self._ssl)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            if self._jwks_url is None:
                self._jwks_url = await self._discover(session)
            return await self._get_json(session, self._jwks_url, "JWKS document")

    async def _discover(self, session) -> str:
        """The issuer's jwks_uri from its discovery document, checked like a configured one."""
        document = await self._get_json(session, self._discovery_url, "discovery document")
        if not isinstance(document, dict) or document.get("issuer") != self._s.issuer:
            named = document.get("issuer") if isinstance(document, dict) else None
            raise JWKSFetchFailed(f"the discovery document names issuer {str(named)[:200]!r}, "
                                  f"not the configured {self._s.issuer!r}")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or oidc_problems(uri, self._s.algorithms):
            raise JWKSFetchFailed(f"the discovery document's jwks_uri {str(uri)[:200]!r} is not an "
                                  "https:// URL")
        logger.info("OIDC keys of %s discovered at %s", self._s.issuer, uri)
        return uri

    @staticmethod
    async def _get_json(session, url: str, what: str) -> Any:
        # no redirects: a redirect could leave HTTPS or the issuer's host
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise JWKSFetchFailed(f"{what}: HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JWKSFetchFailed(f"{what} larger than {MAX_JWKS_BYTES} bytes")
        try:
            return json.loads(bytes(body))
        except ValueError:
            raise JWKSFetchFailed(f"the {what} is not JSON") from None

    def _may_fetch_now(self, *, on_demand: bool) -> bool:
        if self._inflight is not None and not self._inflight.done():
            return True  # joining the running fetch costs nothing
        now = self._clock()
        if now < self._retry_at:
            return False
        return not on_demand or now - self._attempted_at >= ON_DEMAND_MIN_INTERVAL_S

    async def watch(self) -> None:
        """Background task: refresh every `jwks_refresh_s`; after a failure, when the backoff ends."""
        while True:
            if self._may_fetch_now(on_demand=False):
                try:
                    await self.refresh()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    pass  # logged by the fetch; the backoff decides the next attempt
            wait = self._s.jwks_refresh_s if self._failures == 0 else self._retry_at - self._clock()
            await asyncio.sleep(max(0.1, wait))

    async def _key_for(self, kid: str) -> _Key:
        key = self._keys.get(kid)
        if key is None and self._may_fetch_now(on_demand=True):
            try:
                await self.refresh()
            except Exception:
                pass  # logged by the fetch
            key = self._keys.get(kid)
        if key is None:
            raise TokenRejected(f"token signed with unknown key id {kid[:64]!r}")
        return key

    async def verify(self, token: str) -> Principal:
        """The token's principal, or TokenRejected saying why (never another exception)."""
        try:
            header = jwt.get_unverified_header(token)
        except Exception as exc:
            raise TokenRejected(f"malformed token: {type(exc).__name__}") from None
        alg, kid = header.get("alg"), header.get("kid", "")
        if not isinstance(alg, str) or alg not in self._s.algorithms:
            raise TokenRejected(f"token algorithm {str(alg)[:16]!r} is not accepted")
        if not isinstance(kid, str):
            raise TokenRejected("malformed token: its key id is not a string")
        key = await self._key_for(kid)
        if not key.fits(alg):
            raise TokenRejected(f"token algorithm {alg} does not match its signing key")
        claims = self._decode(token, key, alg)
        tenant = claims.get(self._s.tenant_claim)
        user = claims.get(self._s.user_claim)
        if not isinstance(tenant, str) or not tenant:
            raise TokenRejected(f"token has no {self._s.tenant_claim!r} claim")
        if not isinstance(user, str) or not user:
            raise TokenRejected(f"token has no {self._s.user_claim!r} claim")
        return Principal(tenant=tenant, user=user, method="oidc", credential_id=f"{claims['iss']}#{user}")

    def _decode(self, token: str, key: _Key, alg: str) -> dict:
        try:
            return jwt.decode(
                token,
                key=key.jwk.key,
                algorithms=[alg],
                audience=self._s.audience,
                issuer=self._s.issuer,
                leeway=self._s.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("token audience is not this service") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("token issuer is not trusted") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"invalid token: {exc}") from None
        except Exception as exc:  # e.g. a key the algorithm cannot use: still the token's fault
            raise TokenRejected(f"invalid token: {type(exc).__name__}") from None
