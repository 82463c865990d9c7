"""The priority class one request queues in: its tenant's, lowered by its API key or a header.

A tenant's class comes from the spec (`tenants[].priority`, else the class that is
`default_for` its kind). An API key may be issued with a lower class
(`govllm keys create --priority batch`), and a request may lower its own with
`x-govllm-priority: <class>`, e.g. a batch job run with an interactive tenant's
key. The effective class is the least important of the three.

Asking for a more important class than allowed is not an error: the request is
served at the class it is entitled to, as OpenAI serves a `service_tier` the
project lacks at its default tier. Every answer says which class was used in
`x-govllm-priority`, so a client can see it was capped. An unknown class name
is a client mistake and gets 400 `invalid_priority`. A key whose class no longer
exists in the spec (renamed) is put in the least important class: the key was
meant to be limited, and it stays so until it is reissued.
"""

from __future__ import annotations

from serving.config import RouterSettings, TenantSettings
from serving.request import APIError, RequestContext, header

PRIORITY_HEADER = "x-govllm-priority"


class ResolvePriority:
    """Request-path step (after authentication): sets `ctx.priority` and the response header."""

    def __init__(self, router: RouterSettings, tenants: tuple[TenantSettings, ...] | list[TenantSettings]):
        self._names = [c.name for c in router.priority_classes]
        self._rank = {name: i for i, name in enumerate(self._names)}
        self._tenant = {t.id: self._rank[router.priority_class_of(t)] for t in tenants}

    async def __call__(self, ctx: RequestContext) -> None:
        ctx.priority = self._names[self.rank(ctx)]
        ctx.response_headers.append((PRIORITY_HEADER.encode(), ctx.priority.encode()))

    def rank(self, ctx: RequestContext) -> int:
        """Index of the request's class in router.priority_classes (0: most important)."""
        tenant = ctx.principal.tenant if ctx.principal else ""
        rank = self._tenant.get(tenant, 0)
        key_class = ctx.principal.priority if ctx.principal else None
        if key_class is not None:
            rank = max(rank, self._rank.get(key_class, len(self._names) - 1))
        raw = header(ctx.scope, PRIORITY_HEADER.encode())
        if raw is not None:
            asked = raw.decode("latin-1").strip().lower()
            if asked not in self._rank:
                raise APIError(
                    400, f"{PRIORITY_HEADER} must be one of {', '.join(self._names)} (most important "
                    "first); a request may lower its class, not raise it.",
                    code="invalid_priority", param=PRIORITY_HEADER,
                )
            rank = max(rank, self._rank[asked])
        return rank
