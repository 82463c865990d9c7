"""`make bench`: three serving stacks, one machine, one run.

(a) vLLM's own OpenAI server started directly, (b) stock Ray Serve LLM
`build_openai_app`, (c) govllm's full stack with authentication on; all
serve the same generated 2-layer Llama model with the same engine arguments
and get the same requests (streaming chat, 32 output tokens, greedy,
`ignore_eos`).

These 2-core machines are noisy and their speed drifts over minutes, which a
run of stacks one after another turns into differences between the stacks.
So all stacks are started first and then measured in short alternating
bursts (the order reversed every round); while one stack is measured, every
other stack is frozen (SIGSTOP on its whole process tree), so the measured
stack runs alone. The report gives medians across
rounds plus the ratio of each stack to (a) within each round. It also reports
each stack's CPU time per request over its whole process tree, which a slow
host affects much less than wall-clock figures. Timing claims are those
ratios, never absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from cluster.devmodels import DevModelShape, generate
from cluster.spec.schema import DEFAULT_SPEC_PATH
from govllm.runtime_env import free_port
from loadtest.otlp_sink import OTLPSink
from loadtest.serving_bench import BenchResult, run_bench

MODEL_ID = "tiny-llama-ja"
MAX_MODEL_LEN = 2048
#: `python -m govllm`, not the console script: with PYTHONPATH pointing at another checkout the
#: script would still name this checkout's entry point.
GOVLLM = [sys.executable, "-m", "govllm"]


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


@dataclass
class Stack:
    """A server process to benchmark; `start` returns once it answers."""

    name: str
    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/v1/models"
    api_key_file: Path | None = None
    cwd: Path | None = None
    proc: subprocess.Popen | None = None
    port: int = 0
    idle_cpu_pct: float | None = None

    def start(self, log_dir: Path) -> tuple[str, str | None]:
        env = {**os.environ, **self.env}
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.name)
        log = (log_dir / f"{safe}.log").open("a")
        self.proc = subprocess.Popen(
            [part.replace("{port}", str(self.port)) for part in self.command],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd, start_new_session=True,
        )
        base = f"http://127.0.0.1:{self.port}"
        _wait_http(base + self.ready_path, self.proc, 600)
        key = self.api_key_file.read_text().strip() if self.api_key_file else None
        return base, key

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def build_stacks(work: Path, model_path: Path, wanted: list[str],
                 trace_endpoint: str | None = None) -> list[Stack]:
    """Stacks by name; `govllm@KEY=VAL;KEY2=VAL2` is the govllm stack with extra environment.

    `govllm@PYTHONPATH=/path/to/other/checkout` runs another version of govllm (its router and
    serving code, imported ahead of this one) beside this one, for side-by-side comparisons.
    `govllm-traced` is the full stack with OpenTelemetry tracing on, every request sampled and
    exported to `trace_endpoint` (the bench's OTLP sink).
    """
    py = sys.executable
    cpu_env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    all_stacks = {
        "direct": Stack(
            "direct", "(a) vLLM OpenAI server, direct",
            [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
             "--served-model-name", MODEL_ID, "--dtype", "float32", "--enforce-eager",
             "--max-model-len", str(MAX_MODEL_LEN), "--host", "127.0.0.1", "--port", "{port}"],
            env=cpu_env,
        ),
        "stock": Stack(
            "stock", "(b) stock ray.serve.llm build_openai_app",
            [py, "-m", "loadtest.stock_app", "--model-path", str(model_path), "--model-id", MODEL_ID,
             "--port", "{port}"],
        ),
        "stock-nobatch": Stack(
            "stock-nobatch", "(b') stock, stream_batching_interval_ms=0",
            [py, "-m", "loadtest.stock_app", "--model-path", str(model_path), "--model-id", MODEL_ID,
             "--port", "{port}", "--stream-batching-interval-ms", "0"],
        ),
    }
    stacks = []
    for name in wanted:
        if name.startswith("govllm"):
            base, _, extra = name.partition("@")
            env = dict(kv.split("=", 1) for kv in extra.split(";") if kv)
            profile = "bare" if base == "govllm-bare" else "full"
            label = ("(c) govllm full stack: auth, quota, audit on" if profile == "full"
                     else "(c0) govllm router without auth, quota, audit")
            tracing = trace_endpoint if base == "govllm-traced" else None
            if tracing:
                label = "(t) govllm full stack, tracing on (every request, OTLP/HTTP)"
            port = free_port()
            state = work / f"state-{len(stacks)}"
            stack = Stack(
                name, label + (f" [{extra}]" if extra else ""),
                [*GOVLLM, "serve", "--spec", str(_govllm_spec(state, model_path, profile, port, tracing))],
                env=env, ready_path="/readyz",
                api_key_file=(state / "dev-api-key") if profile == "full" else None,
                cwd=work, port=port,
            )
        else:
            stack = all_stacks[name]
            stack.port = free_port()
        stacks.append(stack)
    return stacks


def apply_profile(spec: dict, profile: str) -> None:
    """full: authentication on, and the caller's tenant has (generous) limits so every
    request goes through quota admission and settlement in the shared store; audit on.
    bare: authentication, quota and audit all off."""
    if profile == "full":
        spec["tenants"] = [{
            "id": "bench", "name": "benchmark", "kind": "agency", "max_confidentiality": 2,
            "limits": {"requests_per_minute": 10**7, "tokens_per_minute": 10**9,
                       "monthly_token_budget": 10**12},
        }]
        spec["auth"] = {"enabled": True, "dev_tenant": "bench"}
        spec["audit"] = {"enabled": True}
    else:
        spec["tenants"], spec["auth"], spec["audit"] = [], {"enabled": False}, {"enabled": False}


def _govllm_spec(state: Path, model_path: Path, profile: str, port: int,
                 trace_endpoint: str | None = None) -> Path:
    """The embedded default reduced to the benchmark model, under a profile (apply_profile);
    with `trace_endpoint`, tracing on with every request sampled."""
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    model = next(m for m in spec["models"] if m["id"] == MODEL_ID)
    model.update(source={"path": str(model_path)}, aliases=[])
    spec["models"], spec["aliases"] = [model], {}
    spec["state_dir"] = str(state)
    spec["router"]["port"] = port
    spec["store"] = {"embedded": True, "port": free_port()}
    apply_profile(spec, profile)
    if trace_endpoint:
        spec["tracing"] = {"enabled": True, "endpoint": trace_endpoint, "sample_ratio": 1.0}
    state.mkdir(parents=True, exist_ok=True)
    path = state.parent / f"{state.name}-spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and all its descendants (Ray workers, engines, HAProxy)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def measure(stack: Stack, base: str, key: str | None, *, requests: int, sequential: int) -> dict:
    seq = asyncio.run(run_bench("c1", base, model=MODEL_ID, api_key=key, concurrency=1,
                                requests=sequential, warmup=4))
    cpu0 = tree_cpu_s(stack.proc.pid)
    par = asyncio.run(run_bench("c16", base, model=MODEL_ID, api_key=key, concurrency=16,
                                requests=requests, warmup=0))
    cpu = tree_cpu_s(stack.proc.pid) - cpu0
    return {"c1": seq, "c16": par, "cpu_ms_per_request": 1000 * cpu / max(1, len(par.timings))}


def _tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def freeze(stack: Stack) -> None:
    """SIGSTOP every process of the stack, so it takes no CPU while another is measured."""
    for p in _tree(stack.proc.pid):
        try:
            p.suspend()
        except Exception:
            pass


def thaw(stack: Stack) -> None:
    for p in _tree(stack.proc.pid):
        try:
            p.resume()
        except Exception:
            pass


def wait_serving(base: str, key: str | None, timeout_s: float = 120.0) -> None:
    """After a thaw, wait until a real request succeeds, then let timers settle.

    A frozen stack wakes with every heartbeat older than the registry's TTL, so its
    router briefly knows no replica (it answers 503 until the next heartbeats)."""
    body = json.dumps({"model": MODEL_ID, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "こんにちは"}]}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            req = urllib.request.Request(base + "/v1/chat/completions", data=body, headers=headers)
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
            break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    time.sleep(2)


def idle_cpu_pct(stack: Stack, seconds: float = 5.0) -> float:
    cpu0 = tree_cpu_s(stack.proc.pid)
    time.sleep(seconds)
    return 100 * (tree_cpu_s(stack.proc.pid) - cpu0) / seconds


def _streamed(result: BenchResult) -> bool:
    """Whether the tokens arrived as a stream rather than all at once at the end.

    On 2 cores vLLM's API-server process is sometimes starved by its own engine
    process, and then a whole answer reaches the client in one chunk (TTFT ~ latency)."""
    return result.ttft_p50_ms < 0.5 * result.latency_p50_ms


def summarise(rounds: list[dict[str, dict[str, BenchResult]]], stacks: list[Stack]) -> dict:
    out: dict = {"stacks": {}, "ratios": {}}
    for stack in stacks:
        rs = [r[stack.name] for r in rounds if stack.name in r]
        out["stacks"][stack.name] = {
            "label": stack.label,
            "ttft_p50_ms_c1": statistics.median(r["c1"].ttft_p50_ms for r in rs),
            "latency_p50_ms_c1": statistics.median(r["c1"].latency_p50_ms for r in rs),
            "ttft_p50_ms_c16": statistics.median(r["c16"].ttft_p50_ms for r in rs),
            "latency_p50_ms_c16": statistics.median(r["c16"].latency_p50_ms for r in rs),
            "throughput_rps_c16": statistics.median(r["c16"].throughput_rps for r in rs),
            "throughput_range": [min(r["c16"].throughput_rps for r in rs), max(r["c16"].throughput_rps for r in rs)],
            "errors": sum(r["c1"].errors + r["c16"].errors for r in rs),
            "rounds": len(rs),
            "cpu_ms_per_request": statistics.median(r["cpu_ms_per_request"] for r in rs),
            "idle_cpu_pct": stack.idle_cpu_pct,
        }
    if "direct" in out["stacks"]:
        for stack in stacks:
            if stack.name == "direct":
                continue
            per_round = [
                {
                    "ttft_c1": r[stack.name]["c1"].ttft_p50_ms / r["direct"]["c1"].ttft_p50_ms,
                    "throughput_c16": r[stack.name]["c16"].throughput_rps / r["direct"]["c16"].throughput_rps,
                    "cpu": r[stack.name]["cpu_ms_per_request"] / r["direct"]["cpu_ms_per_request"],
                    "direct_streamed": _streamed(r["direct"]["c1"]),
                }
                for r in rounds
                if stack.name in r and "direct" in r
            ]
            out["ratios"][stack.name] = {
                "ttft_c1_vs_direct": statistics.median(x["ttft_c1"] for x in per_round),
                "throughput_c16_vs_direct": statistics.median(x["throughput_c16"] for x in per_round),
                "cpu_per_request_vs_direct": statistics.median(x["cpu"] for x in per_round),
                "per_round": per_round,
            }
            streamed = [x for x in per_round if x["direct_streamed"]]
            if streamed:
                out["ratios"][stack.name]["ttft_c1_vs_direct_streamed"] = statistics.median(
                    x["ttft_c1"] for x in streamed)
                out["ratios"][stack.name]["rounds_direct_streamed"] = len(streamed)
    out["vs_govllm"] = govllm_ratios(rounds, stacks)
    full = next((s.name for s in stacks if s.name.startswith("govllm")
                 and not s.name.startswith(("govllm-bare", "govllm-traced"))), None)
    bare = next((s.name for s in stacks if s.name.startswith("govllm-bare")), None)
    if full and bare:
        diffs = [
            {"c1": r[full]["c1"].ttft_p50_ms - r[bare]["c1"].ttft_p50_ms,
             "c16": r[full]["c16"].ttft_p50_ms - r[bare]["c16"].ttft_p50_ms}
            for r in rounds if full in r and bare in r
        ]
        out["tenancy_cost_ms"] = {
            "ttft_c1": statistics.median(d["c1"] for d in diffs),
            "ttft_c16": statistics.median(d["c16"] for d in diffs),
            "per_round": diffs,
        }
    return out


def govllm_ratios(rounds: list[dict[str, dict]], stacks: list[Stack]) -> dict:
    """Every other govllm stack against the first one (`govllm`), within each round.

    Tracing on vs off, or this checkout vs another (`govllm@PYTHONPATH=...`): the same machine
    in the same minute, so what differs is the stack, not the host's drift.
    """
    names = [s.name for s in stacks if s.name.startswith("govllm")]
    if len(names) < 2:
        return {}
    base, out = names[0], {}
    for name in names[1:]:
        per_round = [
            {"ttft_c1": r[name]["c1"].ttft_p50_ms / r[base]["c1"].ttft_p50_ms,
             "ttft_c16": r[name]["c16"].ttft_p50_ms / r[base]["c16"].ttft_p50_ms,
             "throughput_c16": r[name]["c16"].throughput_rps / r[base]["c16"].throughput_rps,
             "cpu": r[name]["cpu_ms_per_request"] / r[base]["cpu_ms_per_request"]}
            for r in rounds if name in r and base in r
        ]
        out[name] = {"base": base, "per_round": per_round,
                     **{k: statistics.median(x[k] for x in per_round)
                        for k in ("ttft_c1", "ttft_c16", "throughput_c16", "cpu")}}
    return out


def render_markdown(summary: dict, args: argparse.Namespace, started: str) -> str:
    lines = [
        f"### Run of {started}",
        "",
        f"`{' '.join(['python -m loadtest.bench_stacks'] + sys.argv[1:])}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), {args.rounds} round(s); "
        f"model: generated 2-layer Llama (hidden 128), float32, vLLM-CPU; streaming chat, "
        f"32 output tokens, greedy, `ignore_eos`. All stacks are started, then measured in turn "
        f"(the order reversed every round) while every other stack is frozen with SIGSTOP; per round: c1 = one request at a time ({args.sequential} requests), "
        f"c16 = 16 concurrent ({args.requests} requests). Medians across rounds. CPU per request: "
        f"CPU time of the stack's whole process tree during its c16 burst, divided by the requests. "
        f"Idle CPU: the stack's own use with no load, measured alone after the rounds.",
        "",
        "| stack | TTFT p50 c1 | latency p50 c1 | TTFT p50 c16 | latency p50 c16 | throughput c16 (min-max) | CPU per request c16 | idle CPU | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary["stacks"].values():
        lo, hi = s["throughput_range"]
        lines.append(
            f"| {s['label']} | {s['ttft_p50_ms_c1']:.1f} ms | {s['latency_p50_ms_c1']:.1f} ms | "
            f"{s['ttft_p50_ms_c16']:.1f} ms | {s['latency_p50_ms_c16']:.1f} ms | "
            f"{s['throughput_rps_c16']:.1f} req/s ({lo:.0f}-{hi:.0f}) | {s['cpu_ms_per_request']:.1f} ms | "
            f"{s['idle_cpu_pct']:.0f}% | {s['errors']} |"
        )
    if summary["ratios"]:
        lines += ["", "Ratios to (a), computed within each round, median across rounds:", "",
                  "| stack | TTFT c1 / direct | throughput c16 / direct | CPU per request / direct | per round (TTFT, throughput) |",
                  "|---|---|---|---|---|"]
        for name, r in summary["ratios"].items():
            per = "; ".join(f"{x['ttft_c1']:.2f}, {x['throughput_c16']:.2f}" for x in r["per_round"])
            lines.append(
                f"| {summary['stacks'][name]['label']} | {r['ttft_c1_vs_direct']:.2f}x | "
                f"{r['throughput_c16_vs_direct']:.2f}x | {r['cpu_per_request_vs_direct']:.2f}x | {per} |"
            )
        first = next(iter(summary["ratios"].values()))
        if "rounds_direct_streamed" in first:
            lines += ["", f"Rounds where (a) streamed its tokens (c1 TTFT under half its latency): "
                      f"{first['rounds_direct_streamed']} of {len(first['per_round'])}. "
                      "TTFT c1 / direct over those rounds only: "
                      + ", ".join(f"{summary['stacks'][name]['label'].split(' ')[0]} "
                                  f"{r['ttft_c1_vs_direct_streamed']:.2f}x"
                                  for name, r in summary["ratios"].items())]
    versus = summary.get("vs_govllm")
    if versus:
        base = summary["stacks"][next(iter(versus.values()))["base"]]["label"]
        lines += ["", f"Ratios to {base} [`{next(iter(versus.values()))['base']}`], within each round, "
                  "median across rounds (1.00x: no difference):", "",
                  "| stack | TTFT c1 | TTFT c16 | throughput c16 | CPU per request | per round (TTFT c1, throughput c16) |",
                  "|---|---|---|---|---|---|"]
        for name, r in versus.items():
            per = "; ".join(f"{x['ttft_c1']:.2f}, {x['throughput_c16']:.2f}" for x in r["per_round"])
            lines.append(f"| {summary['stacks'][name]['label']} [`{name}`] | {r['ttft_c1']:.2f}x | "
                         f"{r['ttft_c16']:.2f}x | {r['throughput_c16']:.2f}x | {r['cpu']:.2f}x | {per} |")
    if summary.get("spans_exported") is not None:
        lines += ["", f"Spans the traced stack exported to the bench's OTLP sink during the run: "
                  f"{summary['spans_exported']} in {summary['span_exports']} export requests."]
    cost = summary.get("tenancy_cost_ms")
    if cost:
        per = "; ".join(f"{d['c1']:+.2f}, {d['c16']:+.2f}" for d in cost["per_round"])
        lines += ["", "What authentication, quota and audit add (c minus c0), within each round:", "",
                  f"TTFT p50 at c1: {cost['ttft_c1']:+.2f} ms; at c16: {cost['ttft_c16']:+.2f} ms "
                  f"(per round, c1 and c16: {per})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", default="direct,stock,govllm",
                        help="Comma list of: direct, stock, stock-nobatch, govllm (auth, quota, audit on), "
                             "govllm-bare (all three off), govllm-traced (govllm with tracing on, exporting "
                             "to an OTLP sink in this process); govllm@KEY=VAL;KEY=VAL adds environment.")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=160, help="Requests per round at concurrency 16.")
    parser.add_argument("--sequential", type=int, default=24, help="Requests per round at concurrency 1.")
    parser.add_argument("--output", type=Path, help="Markdown file to append the results to.")
    parser.add_argument("--json", type=Path, help="Write the raw summary here.")
    args = parser.parse_args()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="govllm-bench-") as tmp:
        work = Path(tmp)
        model_path = generate(work / "model", DevModelShape(family="llama"))
        wanted = args.stacks.split(",")
        sink = OTLPSink().start() if any(n.startswith("govllm-traced") for n in wanted) else None
        stacks = build_stacks(work, model_path, wanted, trace_endpoint=sink.url if sink else None)
        rounds: list[dict] = []
        endpoints = {}
        try:
            for stack in stacks:
                print(f"[bench] starting {stack.label}", file=sys.stderr, flush=True)
                endpoints[stack.name] = stack.start(work)
            for stack in stacks:
                freeze(stack)
            for i in range(args.rounds):
                results = {}
                # alternate the order so no stack always runs first (after a pause) or last
                for stack in (stacks if i % 2 == 0 else stacks[::-1]):
                    base, key = endpoints[stack.name]
                    thaw(stack)
                    wait_serving(base, key)
                    try:
                        results[stack.name] = measure(stack, base, key, requests=args.requests,
                                                      sequential=args.sequential)
                    finally:
                        freeze(stack)
                    print(f"[bench] round {i + 1}/{args.rounds} {stack.name}: "
                          + json.dumps({k: (v.as_dict() if isinstance(v, BenchResult) else round(v, 2))
                                        for k, v in results[stack.name].items()}),
                          file=sys.stderr, flush=True)
                rounds.append(results)
            for stack in stacks:  # idle cost, each stack alone and warmed up
                thaw(stack)
                wait_serving(*endpoints[stack.name])
                time.sleep(3)
                stack.idle_cpu_pct = idle_cpu_pct(stack, 10.0)
                freeze(stack)
        finally:
            for stack in stacks:
                thaw(stack)
                stack.stop()
            if sink is not None:
                sink.stop()
    summary = summarise(rounds, stacks)
    if sink is not None:
        summary["spans_exported"], summary["span_exports"] = sink.spans, sink.requests
    text = render_markdown(summary, args, started)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.output:
        with args.output.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
