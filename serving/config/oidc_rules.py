"""What an OIDC configuration must satisfy to fail safe; no dependencies, so config checks can use it.

Only asymmetric signatures are accepted: with `none` anyone can mint a token,
and with an HMAC algorithm (HS256...) the verification key is the signing key,
so a router that trusts the issuer's published keys could be handed a token
"signed" with one of them. The keys themselves must come over HTTPS: whoever
can change the JWKS document in transit can sign tokens for any tenant.
"""

from __future__ import annotations

from collections.abc import Iterable

ASYMMETRIC_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
})


def oidc_problems(jwks_url: str | None, algorithms: Iterable[str], *, issuer: str | None = None) -> list[str]:
    """Why this OIDC configuration is unsafe; empty when it is acceptable.

    Without `jwks_url` the keys' location is discovered from the issuer's
    /.well-known/openid-configuration, so the issuer URL must be HTTPS instead.
    """
    problems = []
    refused = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if refused:
        problems.append(
            f"auth.oidc.algorithms may name only asymmetric algorithms "
            f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}); refused: {', '.join(refused)}"
        )
    if jwks_url is None:
        if not (issuer or "").lower().startswith("https://"):
            problems.append("auth.oidc.issuer must be an https:// URL to discover the signing keys "
                            "from its /.well-known/openid-configuration (or set auth.oidc.jwks_url)")
    elif not jwks_url.lower().startswith("https://"):
        problems.append("auth.oidc.jwks_url must be an https:// URL (set auth.oidc.ca_bundle for a "
                        "private CA)")
    return problems
