"""CPU cost of the router's per-request metrics record, measured in-process with Ray's real
metrics recorder.

`python -m loadtest.bench_metrics` starts a local Ray driver (the recorder a router replica
uses is the same Cython object in every Ray worker), builds the router's RouterMetrics and
times, per request, in one process, median of 5 x 5000 calls:

* `finished` on a streamed chat request that a model answered (the finisher every request
  runs: request counter, tokens, cost, E2E, TTFT and TPOT histograms);
* the part it had before issue 14 (tokens and cost only), the baseline;
* `finished` on a refused request (counter only);
* the two store-latency observations a budgeted tenant's request adds (admit, settle).

It runs after the response, so it is CPU, not latency; docs/benchmarks.md relates it to the
router's other per-request work.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from serving.config import ModelRoute, TenantLimits, TenantSettings
from serving.config.vendor import Price
from serving.request import Principal, RequestContext
from serving.router.metrics.recorder import RouterMetrics

MODEL = ModelRoute(id="tiny-llama-ja", max_model_len=2048,
                   price=Price(input_yen_per_million=100, output_yen_per_million=400))
TENANT = TenantSettings(id="sample-city", name="市", kind="municipality",
                        limits=TenantLimits(monthly_token_budget=1_000_000))


def _answered() -> RequestContext:
    c = RequestContext(request_id=uuid.uuid4().hex, operation="chat", scope={"headers": []})
    c.principal = Principal(tenant=TENANT.id, user="u", method="api_key")
    c.tenant, c.model, c.candidates, c.stream, c.status = TENANT, MODEL, (MODEL,), True, 200
    c.usage = {"prompt_tokens": 60, "completion_tokens": 32, "total_tokens": 92}
    c.first_byte_at = c.started_at + 0.02
    return c


def _refused() -> RequestContext:
    c = RequestContext(request_id=uuid.uuid4().hex, operation="chat", scope={"headers": []})
    c.principal = Principal(tenant=TENANT.id, user="u", method="api_key")
    c.tenant, c.candidates, c.status, c.error_code = TENANT, (MODEL,), 429, "requests_per_minute_exceeded"
    return c


def _per_call_us(fn, contexts) -> float:
    start = time.perf_counter()
    for c in contexts:
        fn(c)
    return (time.perf_counter() - start) / len(contexts) * 1e6


def _before(metrics: RouterMetrics):
    """What the finisher recorded before issue 14: tokens and cost of an answered request."""

    def billed(ctx: RequestContext) -> None:
        usage = ctx.usage or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        tags = {"tenant": ctx.tenant.id, "model": ctx.model.id}
        metrics._tokens.inc(prompt, tags={**tags, "kind": "prompt"})
        metrics._tokens.inc(completion, tags={**tags, "kind": "completion"})
        metrics._cost.inc(ctx.model.price.cost_yen(prompt, completion), tags=tags)

    return billed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        metrics = RouterMetrics()
        assert metrics.enabled, "Ray's metrics recorder is not available"
        finished = lambda c: metrics._finished(c, time.perf_counter())  # noqa: E731 (the finisher's body)
        store = lambda c: (metrics.store_command("admit", 0.0008), metrics.store_command("settle", 0.0007))  # noqa: E731
        rows = {"before: tokens and cost (baseline)": (_before(metrics), _answered),
                "finished: answered stream": (finished, _answered),
                "finished: refused request": (finished, _refused),
                "store latency: admit + settle": (store, _answered)}
        results = {name: [] for name in rows}
        for _ in range(args.rounds):  # interleaved, so drift on a shared host hits every row alike
            for name, (fn, make) in rows.items():
                results[name].append(_per_call_us(fn, [make() for _ in range(args.calls)]))
    finally:
        ray.shutdown()
    base = statistics.median(results["before: tokens and cost (baseline)"])
    print(f"`python -m loadtest.bench_metrics --calls {args.calls} --rounds {args.rounds}`: median of "
          f"{args.rounds} x {args.calls} calls, one process, Ray's metrics recorder\n")
    print("| record | µs per request | x baseline |")
    print("|---|---|---|")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
