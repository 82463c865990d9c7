"""Where `govllm top` reads metrics: a Prometheus server, or the metrics endpoints themselves.

Both answer the same three questions in the same terms (a per-second rate of a counter, a
gauge aggregated over replicas, a quantile of a histogram, each grouped by labels), so the
view computes one frame from either:

* `PrometheusSource` asks a Prometheus server's HTTP API (PromQL over `window`): what an
  operator has on Kubernetes (port-forward to it), with the same series the dashboards use.
* `ScrapeSource` reads the Prometheus text of every endpoint it is given (the local run's
  Ray metrics ports and model replicas' data planes, `govllm metrics targets`) and computes
  the same rates and quantiles itself between its oldest and newest scrape within `window`.
  Ray exports its metrics every 10 s, so a window under 10 s mostly shows nothing new.

Metric names may list alternatives (vLLM's own `vllm:x` or Ray's `ray_vllm_x`): whichever
the deployment exports is read.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

Key = tuple[str, ...]
#: label -> regular expression the label's value must match in full (PromQL's =~).
Where = dict[str, str]


class Source(Protocol):
    def refresh(self) -> None: ...

    def rate(self, names: Sequence[str], by: Sequence[str], where: Where | None = None) -> dict[Key, float]: ...

    def gauge(self, names: Sequence[str], by: Sequence[str], agg: str) -> dict[Key, float]: ...

    def quantile(self, q: float, name: str, by: Sequence[str]) -> dict[Key, float]: ...


# -- Prometheus ---------------------------------------------------------------------------------
def _selector(names: Sequence[str], where: Where | None = None) -> str:
    matchers = [f'__name__=~"{"|".join(names)}"'] if len(names) > 1 else []
    matchers += [f'{k}=~"{v}"' for k, v in (where or {}).items()]
    head = names[0] if len(names) == 1 else ""
    return head + "{" + ", ".join(matchers) + "}"


class PrometheusSource:
    def __init__(self, url: str, window: str = "1m", timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.window = window
        self._timeout_s = timeout_s

    def refresh(self) -> None:
        return None  # Prometheus scrapes by itself

    def query(self, promql: str) -> list[dict]:
        data = urllib.parse.urlencode({"query": promql}).encode()
        req = urllib.request.Request(self.url + "/api/v1/query", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=self._timeout_s) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {body.get('error')}")
        return body["data"]["result"]

    def _grouped(self, promql: str, by: Sequence[str]) -> dict[Key, float]:
        return {tuple(r["metric"].get(label, "") for label in by): float(r["value"][1])
                for r in self.query(promql)}

    def rate(self, names, by, where=None):
        return self._grouped(f"sum by ({', '.join(by)}) (rate({_selector(names, where)}[{self.window}]))", by)

    def gauge(self, names, by, agg):
        return self._grouped(f"{agg} by ({', '.join(by)}) ({_selector(names)})", by)

    def quantile(self, q, name, by):
        inner = f"sum by ({', '.join([*by, 'le'])}) (rate({name}_bucket[{self.window}]))"
        return self._grouped(f"histogram_quantile({q}, {inner})", by)


# -- the endpoints themselves ---------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")


def parse(text: str) -> list[Sample]:
    """Prometheus' text format (prometheus_client's parser, which Ray Serve depends on)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [Sample(s.name, tuple(sorted(s.labels.items())), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def scrape(url: str, timeout_s: float = 5.0) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return parse(resp.read().decode("utf-8", "replace"))


class ScrapeSource:
    def __init__(self, urls: Iterable[str], window_s: float = 30.0, fetch=scrape, clock=time.monotonic):
        self.urls = list(urls)
        self.window_s = window_s
        self._fetch = fetch
        self._clock = clock
        self._scrapes: deque[tuple[float, dict[tuple, Sample]]] = deque()
        self.failed: list[str] = []  # endpoints that did not answer in the last refresh

    def refresh(self) -> None:
        now, samples, self.failed = self._clock(), {}, []
        for url in self.urls:
            try:
                got = self._fetch(url)
            except OSError:
                self.failed.append(url)
                continue
            for s in got:
                samples[(url, s.name, s.labels)] = s
        self._scrapes.append((now, samples))
        while len(self._scrapes) > 2 and now - self._scrapes[1][0] >= self.window_s:
            self._scrapes.popleft()

    def _latest(self) -> dict[tuple, Sample]:
        return self._scrapes[-1][1] if self._scrapes else {}

    def _increase(self, names: Sequence[str], where: Where | None = None) -> tuple[list[tuple[Sample, float]], float]:
        """Each matching counter series' increase between the oldest and newest scrape, and the seconds between."""
        if len(self._scrapes) < 2:
            return [], 0.0
        (t0, old), (t1, new) = self._scrapes[0], self._scrapes[-1]
        out = []
        for key, s in new.items():
            if s.name not in names or not _matches(s, where):
                continue
            before = old.get(key)
            out.append((s, s.value - before.value if before is not None and s.value >= before.value else s.value))
        return out, t1 - t0

    def rate(self, names, by, where=None):
        increases, seconds = self._increase(names, where)
        out: dict[Key, float] = defaultdict(float)
        for s, inc in increases:
            out[tuple(s.label(b) for b in by)] += inc / seconds
        return dict(out)

    def gauge(self, names, by, agg):
        groups: dict[Key, list[float]] = defaultdict(list)
        for s in self._latest().values():
            if s.name in names:
                groups[tuple(s.label(b) for b in by)].append(s.value)
        fn = {"max": max, "min": min, "sum": sum}[agg]
        return {k: fn(v) for k, v in groups.items()}

    def quantile(self, q, name, by):
        increases, _ = self._increase([name + "_bucket"])
        buckets: dict[Key, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for s, inc in increases:
            buckets[tuple(s.label(b) for b in by)][float(s.label("le"))] += inc
        return {k: bucket_quantile(q, sorted(v.items())) for k, v in buckets.items()}


def _matches(s: Sample, where: Where | None) -> bool:
    import re

    return all(re.fullmatch(pattern, s.label(label)) for label, pattern in (where or {}).items())


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs, sorted by bound:
    linear interpolation inside the bucket the rank falls in; NaN without observations."""
    if len(buckets) < 2 or buckets[-1][1] <= 0 or not math.isinf(buckets[-1][0]):
        return math.nan
    rank = q * buckets[-1][1]
    for i, (bound, count) in enumerate(buckets):
        if count >= rank:
            if math.isinf(bound):
                return buckets[-2][0]
            start, before = (0.0, 0.0) if i == 0 else buckets[i - 1]
            if count == before:
                return bound
            return start + (bound - start) * (rank - before) / (count - before)
    return buckets[-2][0]
