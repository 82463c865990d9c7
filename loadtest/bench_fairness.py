"""Fair admission, measured: a quiet tenant beside a flood, and weighted shares of a saturated model.

    flock /tmp/govllm-stack.lock .venv/bin/python -m loadtest.bench_fairness --output docs/benchmarks.md

One `govllm serve` stack: the embedded default reduced to one small model on one replica with
few admission slots (`--slots`, `--queue`), one router, and three tenants of the same priority
class: quiet (weight 1), flood (weight 1) and heavy (weight 2). `router.tenant_max_share` is 1,
so the per-tenant cap never refuses anyone and what is measured is the fair queue alone
(serving/router/admission/fair_queue.py). Keys are issued with the real `govllm keys create`.

Load: headless locust, streaming chat requests of a fixed length (min_tokens = max_tokens,
ignore_eos). Each locust user sends one request every `--pacing` seconds (at once when the
previous one took longer; a refused request is answered at once and counts as not served).
Phases, each `--seconds` long, in alternating order round by round, side by side in one run:

* alone: the quiet tenant's `--quiet-users` users only;
* flood: the same quiet users plus the flood tenant's 10x as many (its rate 10x the quiet's);
* equal: quiet and flood both offered 10x the quiet rate (both backlogged), weights 1:1;
* weighted: heavy (weight 2) and flood (weight 1), both backlogged.

Pinned by default (`--pin on`, loadtest/pinning.py, as `make bench`): the engine on one core,
the stack's HTTP side and locust on the other, locust at the stack's HTTP niceness.

Goals: the quiet tenant's TTFT p90 in `flood` within 1.5x of `alone` (same round), and in the
backlogged phases each tenant's share of the completed requests within 10 % of its weight's
share. With the quiet tenant below its fair share in `flood`, its max-min fair share is its
whole demand: served in full, the flood gets the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from cluster.spec.schema import DEFAULT_SPEC_PATH
from govllm.runtime_env import free_port
from loadtest import pinning
from loadtest.bench_stacks import GOVLLM, Stack, publish, wait_serving
from loadtest.llmload.metrics import percentile

ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "tiny-llama-ja"
TENANTS = {"quiet": 1.0, "flood": 1.0, "heavy": 2.0}
#: phase -> {tenant: users as a multiple of --quiet-users}
PHASES = {
    "alone": {"quiet": 1},
    "flood": {"quiet": 1, "flood": 10},
    "equal": {"quiet": 10, "flood": 10},
    "weighted": {"heavy": 10, "flood": 10},
}

USERS = r'''
import json, os, time
from locust import HttpUser, constant_pacing, task
from loadtest.llmload.stream import StreamMeter

OUT = open(os.environ["BENCH_OUT"], "a", buffering=1)
TOKENS = int(os.environ["BENCH_TOKENS"])
PACING = float(os.environ["BENCH_PACING"])
COUNTS = json.loads(os.environ["BENCH_COUNTS"])
KEYS = json.loads(os.environ["BENCH_KEYS"])
BODY = {"model": os.environ["BENCH_MODEL"], "stream": True, "max_tokens": TOKENS, "min_tokens": TOKENS, "ignore_eos": True}

def ask(user, tenant):
    body = {**BODY, "messages": [{"role": "user", "content": f"公平性の測定 {time.time_ns()}"}]}
    sent = time.time()
    start = time.perf_counter()
    with user.client.post("/v1/chat/completions", json=body, stream=True, catch_response=True,
                          headers={"Authorization": "Bearer " + KEYS[tenant]}, name=tenant) as resp:
        if resp.status_code != 200:
            resp.success()  # a refusal is an outcome here, not a client error
            try:
                code = json.loads(resp.content)["error"]["code"]
            except Exception:
                code = None
            OUT.write(json.dumps({"tenant": tenant, "status": resp.status_code, "code": code,
                                  "sent": sent, "at": time.time()}) + "\n")
            return
        meter = StreamMeter(start, keep_text=False)
        for data in resp.iter_content(chunk_size=None):
            meter.feed(data, time.perf_counter())
        m = meter.result
        ok = m.done and m.ttft_s is not None
        resp.success()
        OUT.write(json.dumps({"tenant": tenant, "status": 200 if ok else 599, "sent": sent, "at": time.time(),
                              "ttft_ms": 1000 * m.ttft_s if ok else None}) + "\n")

def user_class(tenant):
    class U(HttpUser):
        fixed_count = COUNTS.get(tenant, 0)
        wait_time = constant_pacing(PACING)
        @task
        def t(self):
            ask(self, tenant)
    U.__name__ = tenant
    return U

quiet, flood, heavy = (user_class(t) for t in ("quiet", "flood", "heavy"))
'''


def bench_spec(state: Path, port: int, args: argparse.Namespace) -> Path:
    """The embedded default reduced to one model, one replica, `--slots` admission slots."""
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    model = next(m for m in spec["models"] if m["id"] == MODEL_ID)
    model.update(aliases=[], replicas={"min": 1, "max": 1, "max_ongoing_requests": args.slots,
                                       "max_queued_requests": args.queue})
    model.pop("structured_outputs", None)
    spec["models"], spec["aliases"] = [model], {}
    spec["state_dir"] = str(state)
    spec["router"].update(port=port, min_replicas=1, max_replicas=1, tenant_max_share=1.0)
    spec["store"] = {"embedded": True, "port": free_port()}
    spec["tenants"] = [{"id": t, "name": t, "kind": "municipality", "weight": w} for t, w in TENANTS.items()]
    spec["auth"] = {"enabled": True, "dev_tenant": "quiet"}
    spec["audit"] = {"enabled": False}
    if args.layout is not None:  # the engine's OpenMP thread on the engine core from the start
        spec.setdefault("engine", {})["cpu_omp_threads_bind"] = args.layout.omp_threads_bind
    state.mkdir(parents=True, exist_ok=True)
    path = state.parent / "fairness-spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def issue_keys(spec_path: Path) -> dict[str, str]:
    keys = {}
    for tenant in TENANTS:
        out = subprocess.run([*GOVLLM, "keys", "create", "--tenant", tenant, "--user", "bench-fairness",
                              "--json", "--spec", str(spec_path)], capture_output=True, text=True,
                             check=True, timeout=120, cwd=ROOT)
        keys[tenant] = json.loads(out.stdout)["key"]
    return keys


def run_phase(base: str, keys: dict[str, str], counts: dict[str, int], args: argparse.Namespace,
              work: Path, tag: str, pinner: pinning.TreePinner | None = None) -> dict[str, dict]:
    """One locust run with `counts` users per tenant; per tenant: served, refused, TTFT p50/p90.

    Pinned (`--pin on`), the stack's engine runs on its core and everything else, locust
    included, on the other at the stack's HTTP niceness: unpinned, locust at nice 0 beside Ray's
    workers at nice 15 takes the shared cores whenever it is runnable, so the router's and the
    replica's HTTP work (the path to every first token) waits behind the client's stream parsing.
    """
    out = work / f"{tag}.jsonl"
    out.touch()
    users = sum(counts.values())
    env = {**os.environ, "BENCH_OUT": str(out), "BENCH_TOKENS": str(args.tokens),
           "BENCH_PACING": str(args.pacing), "BENCH_COUNTS": json.dumps(counts),
           "BENCH_KEYS": json.dumps(keys), "BENCH_MODEL": MODEL_ID, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "locust", "-f", str(work / "fair_users.py"), *counts, "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{args.seconds}s", "--host", base,
           "--only-summary", "--stop-timeout", "30", "--loglevel", "WARNING"]
    saved = {}
    if pinner is not None:
        pinner.pin()  # again each phase: threads started since are placed too
        # locust inherits this process's cores and niceness: the client's place in `make bench`
        saved = pinning.pin_threads(os.getpid(), pinner.layout.http, pinner.http_nice())
    try:
        with (work / f"{tag}.log").open("w") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                           timeout=args.seconds + 120)
    finally:
        pinning.restore_threads(saved)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line]
    result = {}
    if rows:  # the steady state only: see `in_window`
        t0 = min(r["sent"] for r in rows)
        rows = [r for r in rows if in_window(r, t0 + args.settle, t0 + args.seconds)]
    for tenant in counts:
        mine = [r for r in rows if r["tenant"] == tenant]
        ttft = [r["ttft_ms"] for r in mine if r["status"] == 200]
        result[tenant] = {
            "served": len(ttft), "refused": sum(1 for r in mine if r["status"] in (429, 503)),
            "failed": sum(1 for r in mine if r["status"] not in (200, 429, 503)),
            "pushed_out": sum(1 for r in mine if r["status"] == 429),
            "ttft_p50_ms": percentile(ttft, 50) if ttft else None,
            "ttft_p90_ms": percentile(ttft, 90) if ttft else None,
        }
    return result


def in_window(row: dict, start: float, end: float) -> bool:
    """A request sent after the phase's first `--settle` seconds and answered before its end.

    Every user starts at once (a burst no steady state has), and when the phase's time is up
    locust lets each user finish the request it has in flight (`--stop-timeout`): with 10 users
    per tenant that drain adds about 10 completions to each tenant whatever the weights, which
    pulls a 2:1 split toward 1:1 (runs 1-4 counted them). Throughput shares and TTFT are
    measured on the window where both tenants are backlogged and arriving.
    """
    return row["sent"] >= start and row["at"] <= end


def summarise(rounds: list[dict[str, dict]]) -> dict:
    """Per round: the quiet tenant's TTFT p90 ratio (flood / alone) and each backlogged tenant's
    share of completions vs its weight's share; medians across rounds."""
    ratios, vs_flood, shares = [], [], {"equal": {}, "weighted": {}}
    for r in rounds:
        alone, flood = r["alone"]["quiet"]["ttft_p90_ms"], r["flood"]["quiet"]["ttft_p90_ms"]
        if alone and flood:
            ratios.append(flood / alone)
        quiet50, flood50 = r["flood"]["quiet"]["ttft_p50_ms"], r["flood"]["flood"]["ttft_p50_ms"]
        if quiet50 and flood50:
            vs_flood.append(quiet50 / flood50)
        for phase in shares:
            served = {t: v["served"] for t, v in r[phase].items()}
            total = sum(served.values()) or 1
            for t, n in served.items():
                shares[phase].setdefault(t, []).append(n / total)
    weight_share = {phase: {t: TENANTS[t] / sum(TENANTS[u] for u in PHASES[phase]) for t in PHASES[phase]}
                    for phase in shares}
    return {
        "quiet_ttft_p90_ratio": statistics.median(ratios) if ratios else None,
        "quiet_ttft_p90_ratios": [round(x, 2) for x in ratios],
        "quiet_vs_flood_ttft_p50": [round(x, 2) for x in vs_flood],
        "shares": {p: {t: statistics.median(v) for t, v in s.items()} for p, s in shares.items()},
        "weight_share": weight_share,
    }


def render(rounds: list[dict], summary: dict, args: argparse.Namespace, started: str) -> str:
    cmd = (f"flock /tmp/govllm-stack.lock .venv/bin/python -m loadtest.bench_fairness --rounds {args.rounds} "
           f"--seconds {args.seconds} --slots {args.slots} --queue {args.queue} --tokens {args.tokens} "
           f"--quiet-users {args.quiet_users} --pacing {args.pacing:g} --settle {args.settle:g} "
           f"--pin {args.pin}")
    lines = ["## Fair admission: a quiet tenant beside a flood, weighted shares (issue 15, part 1)", "",
             f"Measured {started} on the 2-core development host: `{cmd}`.", "",
             f"One stack, {MODEL_ID} on 1 replica, {args.slots} admission slots and {args.queue} queued per "
             f"class, 1 router, `tenant_max_share` 1 (the fair queue alone decides); requests of "
             f"{args.tokens} tokens; each locust user one request every {args.pacing:g} s. Quiet: "
             f"{args.quiet_users} user(s); flood: 10x. Phases of {args.seconds} s in alternating order "
             f"per round; counted: requests sent after the phase's first {args.settle:g} s and "
             f"answered before its end (not the start burst, not locust's drain of the requests in "
             f"flight when the phase ends); medians across {args.rounds} rounds. "
             + (f"Pinned: the engine on core(s) {args.layout.omp_threads_bind}, every other process of "
                "the stack and locust on the others, locust at the stack's HTTP niceness "
                "(loadtest/pinning.py)." if args.layout is not None else "Unpinned."), "",
             "| round | phase | tenant (weight) | served | refused: 429 + 503 | TTFT p50 ms | TTFT p90 ms |",
             "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds):
        for phase in PHASES:
            for tenant, v in r[phase].items():
                p50 = f"{v['ttft_p50_ms']:.0f}" if v["ttft_p50_ms"] is not None else "-"
                p90 = f"{v['ttft_p90_ms']:.0f}" if v["ttft_p90_ms"] is not None else "-"
                lines.append(f"| {i + 1} | {phase} | {tenant} ({TENANTS[tenant]:g}) | {v['served']} | "
                             f"{v['pushed_out']} + {v['refused'] - v['pushed_out']} | {p50} | {p90} |")
    ratio = summary["quiet_ttft_p90_ratio"]
    lines += ["", f"* Quiet tenant's TTFT p90, flood / alone: **{ratio:.2f}x** (goal <= 1.5x; per round "
              f"{summary['quiet_ttft_p90_ratios']})." if ratio else "* Quiet tenant's TTFT: no data."]
    lines.append(f"* In the flood phase, the quiet tenant's TTFT p50 / the flood's: "
                 f"{summary['quiet_vs_flood_ttft_p50']} per round (first in line at each freed slot "
                 "vs behind the flood's own queue).")
    for phase in ("equal", "weighted"):
        parts = []
        for tenant, share in summary["shares"][phase].items():
            want = summary["weight_share"][phase][tenant]
            parts.append(f"{tenant} {100 * share:.1f} % (weight share {100 * want:.1f} %, "
                         f"off by {100 * abs(share - want) / want:.0f} %)")
        lines.append(f"* Completions, {phase} phase: " + "; ".join(parts) + " (goal: within 10 %).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=40, help="Length of each phase.")
    parser.add_argument("--slots", type=int, default=4, help="max_ongoing_requests of the replica.")
    parser.add_argument("--queue", type=int, default=8, help="max_queued_requests of the replica.")
    parser.add_argument("--tokens", type=int, default=128, help="Output tokens per request.")
    parser.add_argument("--quiet-users", type=int, default=1)
    parser.add_argument("--pacing", type=float, default=1.0, help="Seconds between a user's requests.")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="Seconds at the start of each phase left out of the figures (the start burst).")
    parser.add_argument("--pin", choices=("on", "off"), default="on",
                        help="Engine on one core, the stack's HTTP side and locust on the others.")
    parser.add_argument("--output", type=Path, help="Markdown file to append the results to.")
    parser.add_argument("--json", type=Path, help="Write the raw rounds and summary here.")
    args = parser.parse_args()
    args.layout = pinning.default_layout(sorted(os.sched_getaffinity(0))) if args.pin == "on" else None
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="govllm-bench-fair-") as tmp:
        work = Path(tmp)
        (work / "fair_users.py").write_text(USERS)
        port = free_port()
        spec_path = bench_spec(work / "state", port, args)
        stack = Stack("fairness", "fairness", [*GOVLLM, "serve", "--spec", str(spec_path)],
                      ready_path="/readyz", cwd=work, port=port)
        try:
            print("[bench-fairness] starting the stack", file=sys.stderr, flush=True)
            base, _ = stack.start(work)
            pinner = pinning.TreePinner(stack.proc.pid, args.layout) if args.layout is not None else None
            keys = issue_keys(spec_path)
            wait_serving(base, keys["quiet"])
            run_phase(base, keys, {"quiet": 2}, argparse.Namespace(**{**vars(args), "seconds": 10}),
                      work, "warmup", pinner)
            for r in range(args.rounds):
                results = {}
                for phase in (list(PHASES) if r % 2 == 0 else list(PHASES)[::-1]):
                    counts = {t: n * args.quiet_users for t, n in PHASES[phase].items()}
                    results[phase] = run_phase(base, keys, counts, args, work, f"r{r}-{phase}", pinner)
                    print(f"[bench-fairness] round {r + 1} {phase}: {json.dumps(results[phase])}",
                          file=sys.stderr, flush=True)
                    time.sleep(2)  # the previous phase's queue drains
                rounds.append(results)
        finally:
            stack.stop()
    summary = summarise(rounds)
    publish(render(rounds, summary, args, started), {"rounds": rounds, "summary": summary},
            output=args.output, json_path=args.json)


if __name__ == "__main__":
    main()
