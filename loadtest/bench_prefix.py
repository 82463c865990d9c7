"""Prefix-cache-aware replica choice, measured: prefix_affinity vs least_loaded vs round_robin.

    flock /tmp/govllm-stack.lock .venv/bin/python -m loadtest.bench_prefix --output docs/benchmarks.md

Three govllm stacks, identical but for `router.replica_choice`, each serving one generated
Llama model on 2 replicas. The model is larger than the development default (4 layers,
hidden 512) so that a long prompt's prefill costs what it does relative to decoding on a
real model, and each replica's KV cache is capped (`num_gpu_blocks_override`) at about
two thirds of the documents in circulation, as a production replica's cache holds part of
a ministry's live RAG documents, not all of them.

Load: the locust RAG scenario (loadtest/locustfile.py RagUser) with `--rag-documents`
distinct documents of `--rag-context-tokens` tokens, each asked random questions by
closed-loop users. Round robin and least loaded prefill each document on both replicas
(and evict more); prefix affinity keeps each document on one.

Like loadtest/bench_stacks.py, the stacks are started first and measured in alternating
rounds (the order reversed every round), every other stack frozen (SIGSTOP) meanwhile, so
the machine's drift falls on all three alike. Per round and stack: locust's TTFT p50 and
throughput, and vLLM's prefix-cache hit rate over the round (vllm:prefix_cache_hits /
vllm:prefix_cache_queries, summed over the replicas' data-plane /metrics). The report
gives medians across rounds and each policy's ratio to round robin within a round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import yaml

from cluster.devmodels import DevModelShape, generate
from cluster.spec.schema import DEFAULT_SPEC_PATH
from govllm.runtime_env import free_port
from loadtest.bench_stacks import GOVLLM, Stack, apply_profile, freeze, publish, thaw, wait_serving

MODEL_ID = "tiny-llama-ja"
POLICIES = ("prefix_affinity", "least_loaded", "round_robin")
#: A prefill that costs about what it does on a real model relative to a decode step.
SHAPE = DevModelShape(family="llama", hidden_size=512, intermediate_size=1024, num_layers=4,
                      num_heads=8, num_kv_heads=2, seed=1)
CPU_BLOCK_TOKENS = 128  # vLLM-CPU's default KV block size


def policy_spec(state: Path, model_path: Path, policy: str, kv_blocks: int) -> Path:
    """The embedded default reduced to the model on 2 replicas, with `policy`."""
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    model = next(m for m in spec["models"] if m["id"] == MODEL_ID)
    model.update(source={"path": str(model_path)}, aliases=[], replicas={"min": 2, "max": 2},
                 engine_kwargs={"num_gpu_blocks_override": kv_blocks})
    model.pop("structured_outputs", None)
    spec["models"], spec["aliases"] = [model], {}
    spec["state_dir"] = str(state)
    spec["router"].update(port=free_port(), replica_choice=policy)
    spec["store"] = {"embedded": True, "port": free_port()}
    apply_profile(spec, "full")
    state.mkdir(parents=True, exist_ok=True)
    path = state.parent / f"{state.name}-spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def replica_urls(spec_path: Path) -> list[str]:
    out = subprocess.run([*GOVLLM, "status", "--json", "--spec", str(spec_path)],
                         capture_output=True, text=True, timeout=120, check=True)
    return [e["url"] for e in json.loads(out.stdout)["endpoints"].get(MODEL_ID, [])]


def cache_counters(urls: list[str]) -> list[tuple[float, float]]:
    """(prefix-cache hits, queries) in tokens, per replica, from its data-plane /metrics."""
    out = []
    for url in urls:
        hits = queries = 0.0
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("vllm:prefix_cache_hits_total{"):
                    hits += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:prefix_cache_queries_total{"):
                    queries += float(line.rsplit(" ", 1)[1])
        out.append((hits, queries))
    return out


def run_locust(base: str, key: str, args: argparse.Namespace, out: Path, seed: int) -> dict:
    """One closed-loop RAG run; locust's summary (loadtest/llmload/metrics.py summarise)."""
    summary = out.with_suffix(".summary.json")
    cmd = [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
           "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s", "--tags", "rag",
           "--host", base, "--api-key", key, "--model", MODEL_ID, "--only-summary",
           "--rag-documents", str(args.documents), "--rag-context-tokens", str(args.context_tokens),
           "--output-tokens", f"{args.output_tokens}-{args.output_tokens}", "--think-time", args.think,
           "--raw-log", str(out.with_suffix(".jsonl")), "--summary-file", str(summary),
           "--seed", str(seed), "--loglevel", "WARNING"]
    with out.with_suffix(".log").open("w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=args.seconds + 180,
                       cwd=Path(__file__).resolve().parents[1])
    data = json.loads(summary.read_text())
    return data.get("summary", data)["overall"]


def measure(stack: Stack, base: str, key: str, urls: list[str], args: argparse.Namespace,
            work: Path, round_no: int) -> dict:
    before = cache_counters(urls)
    overall = run_locust(base, key, args, work / f"r{round_no}-{stack.name}", seed=round_no)
    after = cache_counters(urls)
    per_replica = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]
    hits, queries = sum(h for h, _ in per_replica), sum(q for _, q in per_replica)
    return {
        "ttft_p50_ms": overall["ttft_ms"]["p50"],
        "ttft_p90_ms": overall["ttft_ms"]["p90"],
        "e2e_p50_ms": overall["e2e_ms"]["p50"],
        "throughput_rps": overall.get("throughput_rps"),
        "requests": overall["requests"], "errors": overall.get("error", 0),
        "cache_hit_rate": hits / queries if queries else None,
        "replica_query_share": [round(q / queries, 2) if queries else None for _, q in per_replica],
    }


def summarise(rounds: list[dict[str, dict]]) -> dict:
    out = {}
    for policy in POLICIES:
        rows = [r[policy] for r in rounds]
        med = {k: statistics.median(row[k] for row in rows if row[k] is not None)
               for k in ("ttft_p50_ms", "ttft_p90_ms", "e2e_p50_ms", "throughput_rps", "cache_hit_rate")}
        med["requests"] = sum(row["requests"] for row in rows)
        med["errors"] = sum(row["errors"] for row in rows)
        med["ttft_p50_vs_rr"] = statistics.median(
            r[policy]["ttft_p50_ms"] / r["round_robin"]["ttft_p50_ms"] for r in rounds)
        med["throughput_vs_rr"] = statistics.median(
            r[policy]["throughput_rps"] / r["round_robin"]["throughput_rps"] for r in rounds)
        med["replica_query_share"] = [row["replica_query_share"] for row in rows]
        med["ttft_p50_vs_rr_rounds"] = [round(r[policy]["ttft_p50_ms"] / r["round_robin"]["ttft_p50_ms"], 2)
                                        for r in rounds]
        out[policy] = med
    return out


def render(summary: dict, args: argparse.Namespace, started: str, kv_blocks: int) -> str:
    pa = summary["prefix_affinity"]
    met = pa["ttft_p50_vs_rr"] <= 0.6 and pa["throughput_vs_rr"] >= 1.0
    lines = [
        "| replica_choice | TTFT p50 | TTFT p90 | E2E p50 | throughput | TTFT p50 / RR | "
        "throughput / RR | prefix-cache hit rate | requests (errors) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for policy in POLICIES:
        s = summary[policy]
        lines.append(
            f"| {policy} | {s['ttft_p50_ms']:.0f} ms | {s['ttft_p90_ms']:.0f} ms | {s['e2e_p50_ms']:.0f} ms "
            f"| {s['throughput_rps']:.2f} req/s | {s['ttft_p50_vs_rr']:.2f} | {s['throughput_vs_rr']:.2f} "
            f"| {100 * s['cache_hit_rate']:.0f} % | {s['requests']} ({s['errors']}) |")
    return "\n".join([
        f"Run {started}, {args.rounds} rounds x {args.seconds} s per policy; {args.users} users, "
        f"{args.documents} documents of {args.context_tokens} tokens, {args.output_tokens} output "
        f"tokens, think time {args.think} s; KV cache {kv_blocks} blocks of {CPU_BLOCK_TOKENS} "
        f"tokens per replica. Medians across rounds; ratios to round robin within each round.",
        "", *lines, "",
        f"Goal (prefix_affinity TTFT p50 <= 0.6x round robin at >= its throughput): "
        f"{'met' if met else 'MISSED'}.",
        "", "Per-round TTFT p50 / round robin: "
        + "; ".join(f"{p}: {summary[p]['ttft_p50_vs_rr_rounds']}" for p in POLICIES[:2]) + ".",
        "", "Per-round share of prefix-cache queries per replica (balance): "
        + "; ".join(f"{p}: {summary[p]['replica_query_share']}" for p in POLICIES), "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=40, help="Locust run per round and policy.")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--context-tokens", type=int, default=1500)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--think", default="0-0.5", help="Seconds between a user's requests, MIN-MAX.")
    parser.add_argument("--cache-share", type=float, default=0.75,
                        help="Each replica's KV cache as a share of all documents' tokens.")
    parser.add_argument("--warmup", type=int, default=15, help="Unmeasured locust run per stack first.")
    parser.add_argument("--output", type=Path, help="Markdown file to append the results to.")
    parser.add_argument("--json", type=Path, help="Write the raw rounds and summary here.")
    args = parser.parse_args()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    kv_blocks = max(24, round(args.cache_share * args.documents * args.context_tokens / CPU_BLOCK_TOKENS))
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="govllm-bench-prefix-") as tmp:
        work = Path(tmp)
        model_path = generate(work / "model", SHAPE)
        stacks, endpoints = [], {}
        try:
            for i, policy in enumerate(POLICIES):
                spec_path = policy_spec(work / f"state-{i}", model_path, policy, kv_blocks)
                port = yaml.safe_load(spec_path.read_text())["router"]["port"]
                stack = Stack(policy, policy, [*GOVLLM, "serve", "--spec", str(spec_path)],
                              ready_path="/readyz", api_key_file=work / f"state-{i}" / "dev-api-key",
                              cwd=work, port=port)
                stacks.append(stack)
                print(f"[bench-prefix] starting {policy}", file=sys.stderr, flush=True)
                base, key = stack.start(work)
                endpoints[policy] = (base, key, replica_urls(spec_path))
                if args.warmup:  # every document once on its replicas: the rounds measure steady state
                    run_locust(base, key, argparse.Namespace(**{**vars(args), "seconds": args.warmup}),
                               work / f"warmup-{policy}", seed=99)
                freeze(stack)
            for r in range(args.rounds):
                results = {}
                for stack in (stacks if r % 2 == 0 else stacks[::-1]):
                    base, key, urls = endpoints[stack.name]
                    thaw(stack)
                    try:
                        wait_serving(base, key)
                        results[stack.name] = measure(stack, base, key, urls, args, work, r)
                    finally:
                        freeze(stack)
                    print(f"[bench-prefix] round {r + 1}/{args.rounds} {stack.name}: "
                          f"{json.dumps(results[stack.name])}", file=sys.stderr, flush=True)
                rounds.append(results)
        finally:
            for stack in stacks:
                thaw(stack)
                stack.stop()
    summary = summarise(rounds)
    publish(render(summary, args, started, kv_blocks), {"rounds": rounds, "summary": summary},
            output=args.output, json_path=args.json)


if __name__ == "__main__":
    main()
