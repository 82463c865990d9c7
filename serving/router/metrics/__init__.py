"""govllm's own Prometheus metrics (through Ray's metrics agent): what each router replica
records per request (`recorder`), what it samples in the background (`sampler`), and the
closed label sets that keep their cardinality bounded (`labels`). docs/observability.md
lists every metric."""

from serving.router.metrics.recorder import RouterMetrics
from serving.router.metrics.sampler import MetricsSampler

__all__ = ["MetricsSampler", "RouterMetrics"]
