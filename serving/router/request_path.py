"""The request path, built in one place from the config and the shared store.

The router deployment (serving/router/deployment.py) and the tenancy benchmark
(loadtest/bench_tenancy.py) both call `build_request_path`, so what the benchmark times is
exactly what a router replica runs, step for step: authentication, parsing, model
resolution, the confidentiality policy, the personal-information guard (when any tenant
or model has a policy), quota admission; the audit trail's begin/end; and the finishers
(quota settlement, per-request metrics, the access log).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serving.audit.trail import AuditTrail, redis_heads
from serving.config import ServingConfig
from serving.pii.step import PIIGuard
from serving.request import Finisher, Step
from serving.router.admission.priority import ResolvePriority
from serving.router.feedback import FeedbackEndpoint
from serving.router.pipeline import AccessLog, Authenticate, ParseRequest, ResolveModel
from serving.store import StoreKeyspace, sync_client
from serving.tenancy.keystore import KeyCache
from serving.tenancy.oidc import OIDCVerifier
from serving.tenancy.policy import ConfidentialityPolicy
from serving.tenancy.quota import QuotaLedger


@dataclass
class RequestPath:
    """The parts of one router replica's request path (their background jobs included)."""

    steps: list[Step]  # in order; the first authenticates
    finishers: list[Finisher]  # after every request, whatever its outcome
    authenticate: Authenticate  # also guards /v1/feedback
    key_cache: KeyCache
    oidc: OIDCVerifier | None
    quota: QuotaLedger
    audit: AuditTrail | None
    feedback: FeedbackEndpoint


def build_request_path(config: ServingConfig, store: Any, keyspace: StoreKeyspace, *,
                       chain_hint: str, metrics: Any = None,
                       key_staleness_s: float | None = None) -> RequestPath:
    """Every step, finisher and stateful part of the request path for `config`.

    Args:
        store: the async Redis client of the shared store.
        chain_hint: names this replica's audit chain (its replica id).
        metrics: the replica's RouterMetrics (None: nothing recorded, as in the benchmark).
        key_staleness_s: override of auth.key_staleness_s (the benchmark never watches keys).
    """
    key_cache = KeyCache(store, keyspace, staleness_s=(
        config.auth.key_staleness_s if key_staleness_s is None else key_staleness_s))
    oidc = OIDCVerifier(config.auth.oidc) if config.auth.oidc else None
    quota = QuotaLedger(config, store, keyspace, metrics=metrics)
    audit = None
    if config.audit is not None:
        audit = AuditTrail(config.audit, app=config.app_name, chain_hint=chain_hint,
                           heads=redis_heads(sync_client(config.store), keyspace.audit_heads),
                           metrics=metrics)
    authenticate = Authenticate(config, keys=key_cache, oidc=oidc)
    steps: list[Step] = [authenticate, ResolvePriority(config.router, config.tenants), ParseRequest(),
                         ResolveModel(config), ConfidentialityPolicy(),
                         *PIIGuard.for_config(config, metrics), quota]
    finishers: list[Finisher] = [quota.settle, *([metrics.finished] if metrics is not None else []),
                                 AccessLog()]
    return RequestPath(steps=steps, finishers=finishers, authenticate=authenticate,
                       key_cache=key_cache, oidc=oidc, quota=quota, audit=audit,
                       feedback=FeedbackEndpoint(store, keyspace, audit=audit, metrics=metrics))
