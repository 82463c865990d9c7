"""OIDC bearer tokens: JWTs signed by the government identity provider.

The signing keys (JWKS) are fetched asynchronously and cached: refreshed in
the background every `jwks_refresh_s`, and at most every 10 s on demand when
a token names a key id the cache does not know (key rotation at the issuer).
Verification itself (signature, `exp`/`nbf`, `iss`, `aud`) is local and
takes microseconds. Tenant and user come from configurable claims; a token
without them, or for a tenant the spec does not declare, is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import jwt

from serving.config import OIDCSettings
from serving.keys import Principal

logger = logging.getLogger("govllm.oidc")

_ON_DEMAND_MIN_INTERVAL_S = 10.0


class TokenRejected(Exception):
    """The token is not acceptable; the message says why (safe to show the caller)."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("gvk_")


class OIDCVerifier:
    def __init__(self, settings: OIDCSettings):
        self._s = settings
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        import aiohttp

        async with self._lock:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(self._s.jwks_url) as resp:
                    resp.raise_for_status()
                    document = json.loads(await resp.read())
            keys = {}
            for entry in document.get("keys", []):
                try:
                    key = jwt.PyJWK(entry)
                except jwt.PyJWKError as exc:
                    logger.warning("ignoring unusable JWKS entry %s: %s", entry.get("kid"), exc)
                    continue
                keys[entry.get("kid", "")] = key
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def watch(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("JWKS refresh from %s failed: %s", self._s.jwks_url, exc)
            await asyncio.sleep(self._s.jwks_refresh_s)

    async def _key_for(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._fetched_at > _ON_DEMAND_MIN_INTERVAL_S:
            try:
                await self.refresh()
            except Exception as exc:
                logger.warning("JWKS refresh for unknown kid %s failed: %s", kid, exc)
            key = self._keys.get(kid)
        if key is None:
            raise TokenRejected(f"token signed with unknown key id {kid!r}")
        return key

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"malformed token: {exc}") from None
        if header.get("alg") not in self._s.algorithms:
            raise TokenRejected(f"token algorithm {header.get('alg')!r} is not accepted")
        key = await self._key_for(header.get("kid", ""))
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=list(self._s.algorithms),
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
        tenant = claims.get(self._s.tenant_claim)
        user = claims.get(self._s.user_claim)
        if not isinstance(tenant, str) or not tenant:
            raise TokenRejected(f"token has no {self._s.tenant_claim!r} claim")
        if not isinstance(user, str) or not user:
            raise TokenRejected(f"token has no {self._s.user_claim!r} claim")
        return Principal(tenant=tenant, user=user, method="oidc", credential_id=f"{claims['iss']}#{user}")
