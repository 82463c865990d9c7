"""`make bench`: serving stacks, one machine, one run.

(a) vLLM's own OpenAI server started directly, (b) stock Ray Serve LLM
`build_openai_app` (and (b2) the same with Ray's direct streaming through
HAProxy), (c) govllm's full stack with authentication on, and (d) that stack's
model replica called directly on its data-plane port (the engine without the
router); all serve the same generated 2-layer Llama model with the same engine
arguments and get the same requests (streaming chat, 32 output tokens, greedy,
`ignore_eos`).

`--pin on` measures with the engine processes on one core and every other
process (HTTP servers, Ray, the client) on the other, identically for every
stack (loadtest/pinning.py); `--pin both` measures each stack both ways in every
round. `--vllm-bench` adds vLLM's own client (`vllm bench serve`) at c16 beside
this harness's client.

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
import secrets
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
from govllm.runtime_env import free_port, serve_environment
from loadtest import pinning, vllm_bench
from loadtest.otlp_sink import OTLPSink
from loadtest.serving_bench import BenchResult, run_bench
from serving.config import DATA_PLANE_TOKEN_ENV

MODEL_ID = "tiny-llama-ja"
MAX_MODEL_LEN = 2048
#: `python -m govllm`, not the console script: with PYTHONPATH pointing at another checkout the
#: script would still name this checkout's entry point.
GOVLLM = [sys.executable, "-m", "govllm"]
#: Suffix of a measurement taken with the pinned layout ("govllm+pin").
PIN = "+pin"
#: The target `--pin` modes measure, in order.
PIN_MODES = {"off": ("",), "on": (PIN,), "both": ("", PIN)}


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
    #: A view: another stack's processes, measured at another address (govllm-dp).
    view_of: str | None = None
    spec_path: Path | None = None
    data_plane_token: str | None = None

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
        if self.view_of or self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def data_plane_view(stacks: list[Stack], name: str = "govllm-dp") -> Stack:
    """(d): the first full govllm stack's model replica, called on its data-plane port with
    the data-plane credential (what the router itself sends), so the engine without the router."""
    parent = next((s for s in stacks if s.name.startswith("govllm") and s.api_key_file is not None
                   and not s.view_of), None)
    if parent is None:
        raise SystemExit(f"{name} needs a full govllm stack in --stacks (e.g. govllm,{name})")
    return Stack(name, "(d) the same replica's data plane, called directly", [], view_of=parent.name)


def _stock_direct_env(work: Path) -> dict[str, str]:
    """Ray's direct streaming: HAProxy asks the ingress's /internal/route for a replica, then
    streams from that replica's own HTTP port. HAProxy's files and side ports private to the run
    (as govllm's), nothing else of govllm's tuning."""
    private = serve_environment(work / "stock-direct")
    env = {k: v for k, v in private.items() if k.startswith("RAY_SERVE_HAPROXY_")}
    env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING="1")
    return env


def build_stacks(work: Path, model_path: Path, wanted: list[str],
                 trace_endpoint: str | None = None, omp_bind: str = "auto") -> list[Stack]:
    """Stacks by name; `govllm@KEY=VAL;KEY2=VAL2` is the govllm stack with extra environment.

    `omp_bind` is every engine's VLLM_CPU_OMP_THREADS_BIND (spec `engine.cpu_omp_threads_bind`
    for govllm), the same for all stacks.

    `govllm@PYTHONPATH=/path/to/other/checkout` runs another version of govllm (its router and
    serving code, imported ahead of this one) beside this one, for side-by-side comparisons.
    `govllm-traced` is the full stack with OpenTelemetry tracing on, every request sampled and
    exported to `trace_endpoint` (the bench's OTLP sink).
    """
    py = sys.executable
    cpu_env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": omp_bind}
    stock = [py, "-m", "loadtest.stock_app", "--model-path", str(model_path), "--model-id", MODEL_ID,
             "--port", "{port}", "--omp-threads-bind", omp_bind]
    all_stacks = {
        "direct": Stack(
            "direct", "(a) vLLM OpenAI server, direct",
            [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
             "--served-model-name", MODEL_ID, "--dtype", "float32", "--enforce-eager",
             "--max-model-len", str(MAX_MODEL_LEN), "--host", "127.0.0.1", "--port", "{port}"],
            env=cpu_env,
        ),
        "stock": Stack("stock", "(b) stock ray.serve.llm build_openai_app", stock),
        "stock-nobatch": Stack(
            "stock-nobatch", "(b') stock, stream_batching_interval_ms=0",
            [*stock, "--stream-batching-interval-ms", "0"],
        ),
        "stock-direct": Stack(
            "stock-direct", "(b2) stock build_openai_app, direct streaming (HAProxy)", stock,
            env=_stock_direct_env(work),
        ),
    }
    stacks = []
    for name in wanted:
        if name == "govllm-dp":
            stacks.append(data_plane_view(stacks))
            continue
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
            spec_path = _govllm_spec(state, model_path, profile, port, tracing, omp_bind)
            token = secrets.token_urlsafe(32)  # exported, as an operator may: (d) presents it
            stack = Stack(
                name, label + (f" [{extra}]" if extra else ""),
                [*GOVLLM, "serve", "--spec", str(spec_path)],
                env={**env, DATA_PLANE_TOKEN_ENV: token}, ready_path="/readyz",
                api_key_file=(state / "dev-api-key") if profile == "full" else None,
                cwd=work, port=port, spec_path=spec_path, data_plane_token=token,
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
                 trace_endpoint: str | None = None, omp_bind: str = "auto") -> Path:
    """The embedded default reduced to the benchmark model, under a profile (apply_profile);
    with `trace_endpoint`, tracing on with every request sampled."""
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    model = next(m for m in spec["models"] if m["id"] == MODEL_ID)
    model.update(source={"path": str(model_path)}, aliases=[])
    spec["models"], spec["aliases"] = [model], {}
    spec["state_dir"] = str(state)
    spec["router"]["port"] = port
    spec["store"] = {"embedded": True, "port": free_port()}
    spec["engine"]["cpu_omp_threads_bind"] = omp_bind
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


def measure(stack: Stack, base: str, key: str | None, *, requests: int, sequential: int,
            tokenizer: Path | None = None) -> dict:
    """c1 and c16 with this harness's client; with `tokenizer`, then c16 with `vllm bench serve`."""
    seq = asyncio.run(run_bench("c1", base, model=MODEL_ID, api_key=key, concurrency=1,
                                requests=sequential, warmup=4))
    cpu0 = tree_cpu_s(stack.proc.pid)
    par = asyncio.run(run_bench("c16", base, model=MODEL_ID, api_key=key, concurrency=16,
                                requests=requests, warmup=0))
    cpu = tree_cpu_s(stack.proc.pid) - cpu0
    out = {"c1": seq, "c16": par, "cpu_ms_per_request": 1000 * cpu / max(1, len(par.timings))}
    if tokenizer is not None:
        res = vllm_bench.run(vllm_bench.command_args(base, model=MODEL_ID, tokenizer=str(tokenizer),
                                                     concurrency=16, requests=requests), api_key=key)
        out["vllm_bench"] = vllm_bench_figures(res)
    return out


def measure_in_mode(stack: Stack, base: str, key: str | None, args: argparse.Namespace,
                    pinner: pinning.TreePinner | None, tokenizer: Path | None) -> dict:
    """`measure` unpinned, or with the stack's tree and this process pinned (then undone)."""
    saved = {}
    if pinner is not None:
        nice = pinner.http_nice()
        print(f"[bench] pinned {stack.name} (threads per side): {pinner.pin()}, client at nice {nice}",
              file=sys.stderr, flush=True)
        saved = pinning.pin_threads(os.getpid(), pinner.layout.http, nice)
    try:
        wait_serving(base, key)
        return measure(stack, base, key, requests=args.requests, sequential=args.sequential,
                       tokenizer=tokenizer)
    finally:
        if pinner is not None:
            pinning.restore_threads(saved)
            pinner.unpin()


def open_view(view: Stack, parent: Stack, work: Path) -> tuple[str, str | None]:
    """(d)'s address and credential: the parent's first replica of the model, from `govllm status`."""
    out = subprocess.run([*GOVLLM, "status", "--json", "--spec", str(parent.spec_path)], cwd=work,
                         capture_output=True, text=True, timeout=120, check=True)
    replicas = json.loads(out.stdout)["endpoints"][MODEL_ID]
    view.proc = parent.proc
    return replicas[0]["url"], parent.data_plane_token


def vllm_bench_figures(result: dict) -> dict:
    """The figures this report uses from a `vllm bench serve` result."""
    return {"throughput_rps": result["request_throughput"], "ttft_p50_ms": result["median_ttft_ms"],
            "e2el_p50_ms": result["median_e2el_ms"], "failed": result.get("failed", 0)}


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


def mode_of(name: str) -> str:
    """"+pin" for a measurement with the pinned layout, "" otherwise."""
    return PIN if name.endswith(PIN) else ""


def base_name(name: str) -> str:
    return name.removesuffix(PIN)


def measured_names(rounds: list[dict]) -> list[str]:
    """Every measurement name in the rounds, in first-seen order."""
    return list(dict.fromkeys(k for r in rounds for k in r))


def _is_full_govllm(name: str) -> bool:
    return name.startswith("govllm") and not name.startswith(("govllm-bare", "govllm-traced", "govllm-dp"))


def pair_ratios(rounds: list[dict], a: str, b: str) -> dict | None:
    """`a` against `b` within each round (throughput as a ratio, TTFT p50 as a difference in
    ms), medians across rounds; None when no round measured both."""
    per_round = []
    for r in rounds:
        if a not in r or b not in r:
            continue
        x = {"throughput_c16": r[a]["c16"].throughput_rps / r[b]["c16"].throughput_rps,
             "ttft_c1_ms": r[a]["c1"].ttft_p50_ms - r[b]["c1"].ttft_p50_ms,
             "ttft_c16_ms": r[a]["c16"].ttft_p50_ms - r[b]["c16"].ttft_p50_ms}
        if "vllm_bench" in r[a] and "vllm_bench" in r[b]:
            va, vb = r[a]["vllm_bench"], r[b]["vllm_bench"]
            x["vb_throughput_c16"] = va["throughput_rps"] / vb["throughput_rps"]
            x["vb_ttft_c16_ms"] = va["ttft_p50_ms"] - vb["ttft_p50_ms"]
        per_round.append(x)
    if not per_round:
        return None
    keys = [k for k in per_round[0] if all(k in x for x in per_round)]
    return {"a": a, "b": b, "per_round": per_round,
            **{k: statistics.median(x[k] for x in per_round) for k in keys}}


#: Issue 15: the full stack keeps >= 0.95x of its own engine's data-plane throughput at c16,
#: and adds at most 2 ms to TTFT p50.
CAPACITY_GOAL = {"throughput_c16": 0.95, "ttft_ms": 2.0}


def capacity(rounds: list[dict]) -> list[dict]:
    """The full govllm stack against (d) its own replica's data plane, (b2) stock direct
    streaming and (a) vLLM direct, in each pin mode measured."""
    names = measured_names(rounds)
    full = next((base_name(n) for n in names if _is_full_govllm(n)), None)
    if full is None:
        return []
    out = []
    for mode in ("", PIN):
        for other in ("govllm-dp", "stock-direct", "direct"):
            res = pair_ratios(rounds, full + mode, other + mode)
            if res is not None:
                if other == "govllm-dp":
                    res["meets_goal"] = meets_capacity_goal(res)
                out.append(res)
    return out


def meets_capacity_goal(res: dict) -> bool:
    """Throughput at c16 and TTFT p50 (c1 and c16) within the goal, by this harness's client
    and, where it ran, by `vllm bench serve` too."""
    ok = (res["throughput_c16"] >= CAPACITY_GOAL["throughput_c16"]
          and max(res["ttft_c1_ms"], res["ttft_c16_ms"]) <= CAPACITY_GOAL["ttft_ms"])
    if "vb_throughput_c16" in res:
        ok = ok and res["vb_throughput_c16"] >= CAPACITY_GOAL["throughput_c16"] \
            and res["vb_ttft_c16_ms"] <= CAPACITY_GOAL["ttft_ms"]
    return ok


def summarise(rounds: list[dict[str, dict[str, BenchResult]]], stacks: list[Stack]) -> dict:
    out: dict = {"stacks": {}, "ratios": {}}
    by_name = {s.name: s for s in stacks}
    names = measured_names(rounds)
    for name in names:
        stack = by_name[base_name(name)]
        rs = [r[name] for r in rounds if name in r]
        out["stacks"][name] = {
            "label": stack.label + (" [pinned]" if mode_of(name) else ""),
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
        vb = [r["vllm_bench"] for r in rs if "vllm_bench" in r]
        if vb:
            out["stacks"][name]["vllm_bench"] = {
                k: statistics.median(x[k] for x in vb) for k in ("throughput_rps", "ttft_p50_ms", "e2el_p50_ms")}
            out["stacks"][name]["vllm_bench"]["failed"] = sum(x["failed"] for x in vb)
    for name in names:
        direct = "direct" + mode_of(name)
        if base_name(name) == "direct" or direct not in out["stacks"]:
            continue
        per_round = [
            {
                "ttft_c1": r[name]["c1"].ttft_p50_ms / r[direct]["c1"].ttft_p50_ms,
                "throughput_c16": r[name]["c16"].throughput_rps / r[direct]["c16"].throughput_rps,
                "cpu": r[name]["cpu_ms_per_request"] / r[direct]["cpu_ms_per_request"],
                "direct_streamed": _streamed(r[direct]["c1"]),
            }
            for r in rounds
            if name in r and direct in r
        ]
        out["ratios"][name] = {
            "ttft_c1_vs_direct": statistics.median(x["ttft_c1"] for x in per_round),
            "throughput_c16_vs_direct": statistics.median(x["throughput_c16"] for x in per_round),
            "cpu_per_request_vs_direct": statistics.median(x["cpu"] for x in per_round),
            "per_round": per_round,
        }
        streamed = [x for x in per_round if x["direct_streamed"]]
        if streamed:
            out["ratios"][name]["ttft_c1_vs_direct_streamed"] = statistics.median(
                x["ttft_c1"] for x in streamed)
            out["ratios"][name]["rounds_direct_streamed"] = len(streamed)
    out["vs_govllm"] = govllm_ratios(rounds, stacks)
    out["capacity"] = capacity(rounds)
    for mode in ("", PIN):
        full = next((n for n in names if _is_full_govllm(n) and mode_of(n) == mode), None)
        bare = next((n for n in names if n.startswith("govllm-bare") and mode_of(n) == mode), None)
        if not (full and bare):
            continue
        diffs = [
            {"c1": r[full]["c1"].ttft_p50_ms - r[bare]["c1"].ttft_p50_ms,
             "c16": r[full]["c16"].ttft_p50_ms - r[bare]["c16"].ttft_p50_ms}
            for r in rounds if full in r and bare in r
        ]
        out["tenancy_cost_ms" + mode.replace("+", "_")] = {
            "ttft_c1": statistics.median(d["c1"] for d in diffs),
            "ttft_c16": statistics.median(d["c16"] for d in diffs),
            "per_round": diffs,
        }
    return out


def publish(text: str, data: object, *, output: Path | None, json_path: Path | None) -> None:
    """Print a benchmark's Markdown report, write its raw data as JSON (`--json`) and append the
    report to a Markdown file (`--output`, docs/benchmarks.md): what every stack bench does."""
    print(text)
    if json_path:
        json_path.write_text(json.dumps(data, indent=2))
    if output:
        with output.open("a") as f:
            f.write("\n" + text)


def govllm_ratios(rounds: list[dict[str, dict]], stacks: list[Stack]) -> dict:
    """Every other govllm stack against the first one (`govllm`), within each round and pin mode.

    Tracing on vs off, or this checkout vs another (`govllm@PYTHONPATH=...`): the same machine
    in the same minute, so what differs is the stack, not the host's drift. (d), the data
    plane, is compared in `capacity`.
    """
    given = {s.name for s in stacks}
    names = [n for n in measured_names(rounds) if base_name(n) in given
             and n.startswith("govllm") and not n.startswith("govllm-dp")]
    out = {}
    for mode in ("", PIN):
        in_mode = [n for n in names if mode_of(n) == mode]
        if len(in_mode) < 2:
            continue
        base = in_mode[0]
        for name in in_mode[1:]:
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
        f"({os.cpu_count()} CPUs, {platform.machine()}), {args.rounds} round(s); "
        f"model: generated 2-layer Llama (hidden 128), float32, vLLM-CPU; streaming chat, "
        f"32 output tokens, greedy, `ignore_eos`. All stacks are started, then measured in turn "
        f"(the order reversed every round) while every other stack is frozen with SIGSTOP; per round: c1 = one request at a time ({args.sequential} requests), "
        f"c16 = 16 concurrent ({args.requests} requests). Medians across rounds. CPU per request: "
        f"CPU time of the stack's whole process tree during its c16 burst, divided by the requests. "
        f"Idle CPU: the stack's own use with no load, measured alone after the rounds."
        + (f" [pinned]: engine processes (vLLM EngineCore and Worker) on core(s) {args.layout.omp_threads_bind}, "
           f"every other process of the stack and the client on the others (loadtest/pinning.py); "
           f"every engine started with VLLM_CPU_OMP_THREADS_BIND={args.layout.omp_threads_bind}; "
           f"the client at the niceness of the stack's HTTP side (15 under Ray, 0 for vLLM's server)."
           if args.pin != "off" else "")
        + (" vllm bench serve: the upstream client, c16, the same number of requests, random "
           "16-token prompts, 32 output tokens, `--ignore-eos`, greedy; run right after this "
           "harness's c16 burst." if args.vllm_bench else ""),
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
    vb = {n: s["vllm_bench"] for n, s in summary["stacks"].items() if "vllm_bench" in s}
    if vb:
        lines += ["", "The same stacks by `vllm bench serve` (c16), medians across rounds:", "",
                  "| stack | throughput c16 | TTFT p50 c16 | latency p50 c16 | failed |", "|---|---|---|---|---|"]
        for name, v in vb.items():
            lines.append(f"| {summary['stacks'][name]['label']} | {v['throughput_rps']:.1f} req/s | "
                         f"{v['ttft_p50_ms']:.1f} ms | {v['e2el_p50_ms']:.1f} ms | {v['failed']} |")
    lines += render_capacity(summary)
    versus = summary.get("vs_govllm")
    if versus:
        lines += ["", "Ratios to the first govllm stack of the same pin mode, within each round, "
                  "median across rounds (1.00x: no difference):", "",
                  "| stack | against | TTFT c1 | TTFT c16 | throughput c16 | CPU per request | per round (TTFT c1, throughput c16) |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in versus.items():
            per = "; ".join(f"{x['ttft_c1']:.2f}, {x['throughput_c16']:.2f}" for x in r["per_round"])
            lines.append(f"| {summary['stacks'][name]['label']} [`{name}`] | `{r['base']}` | {r['ttft_c1']:.2f}x | "
                         f"{r['ttft_c16']:.2f}x | {r['throughput_c16']:.2f}x | {r['cpu']:.2f}x | {per} |")
    if summary.get("spans_exported") is not None:
        lines += ["", f"Spans the traced stack exported to the bench's OTLP sink during the run: "
                  f"{summary['spans_exported']} in {summary['span_exports']} export requests."]
    for key, mode in (("tenancy_cost_ms", ""), ("tenancy_cost_ms_pin", " [pinned]")):
        cost = summary.get(key)
        if cost:
            per = "; ".join(f"{d['c1']:+.2f}, {d['c16']:+.2f}" for d in cost["per_round"])
            lines += ["", f"What authentication, quota and audit add (c minus c0){mode}, within each round:", "",
                      f"TTFT p50 at c1: {cost['ttft_c1']:+.2f} ms; at c16: {cost['ttft_c16']:+.2f} ms "
                      f"(per round, c1 and c16: {per})"]
    return "\n".join(lines) + "\n"


def render_capacity(summary: dict) -> list[str]:
    """The router-capacity table: the full stack against its own data plane and the others."""
    rows = summary.get("capacity") or []
    if not rows:
        return []
    goal = (f"goal against (d): throughput >= {CAPACITY_GOAL['throughput_c16']:.2f}x, "
            f"TTFT p50 at most +{CAPACITY_GOAL['ttft_ms']:.0f} ms")
    lines = ["", f"The full govllm stack against other targets, within each round, median across rounds ({goal}):", "",
             "| govllm against | throughput c16 | TTFT p50 c1 | TTFT p50 c16 | vllm bench: throughput c16 | "
             "vllm bench: TTFT p50 c16 | goal | per round (throughput c16, TTFT c1 ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vb_t = f"{r['vb_throughput_c16']:.2f}x" if "vb_throughput_c16" in r else "-"
        vb_f = f"{r['vb_ttft_c16_ms']:+.1f} ms" if "vb_ttft_c16_ms" in r else "-"
        verdict = ("met" if r["meets_goal"] else "not met") if "meets_goal" in r else ""
        per = "; ".join(f"{x['throughput_c16']:.2f}, {x['ttft_c1_ms']:+.1f}" for x in r["per_round"])
        lines.append(f"| {summary['stacks'][r['b']]['label']} | {r['throughput_c16']:.2f}x | "
                     f"{r['ttft_c1_ms']:+.1f} ms | {r['ttft_c16_ms']:+.1f} ms | {vb_t} | {vb_f} | {verdict} | {per} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", default="direct,stock,govllm",
                        help="Comma list of: direct, stock, stock-nobatch, stock-direct (Ray's direct "
                             "streaming), govllm (auth, quota, audit on), govllm-dp (that stack's replica on "
                             "its data-plane port, after govllm), "
                             "govllm-bare (all three off), govllm-traced (govllm with tracing on, exporting "
                             "to an OTLP sink in this process); govllm@KEY=VAL;KEY=VAL adds environment.")
    parser.add_argument("--pin", choices=sorted(PIN_MODES), default="off",
                        help="on: engines on one core, everything else (and the client) on the others; "
                             "both: every stack measured both ways in every round.")
    parser.add_argument("--vllm-bench", action="store_true",
                        help="Also measure c16 with vLLM's own client (`vllm bench serve`).")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=160, help="Requests per round at concurrency 16.")
    parser.add_argument("--sequential", type=int, default=24, help="Requests per round at concurrency 1.")
    parser.add_argument("--output", type=Path, help="Markdown file to append the results to.")
    parser.add_argument("--json", type=Path, help="Write the raw summary here.")
    args = parser.parse_args()
    args.layout = pinning.default_layout(os.sched_getaffinity(0)) if args.pin != "off" else None
    modes = PIN_MODES[args.pin]
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="govllm-bench-") as tmp:
        work = Path(tmp)
        model_path = generate(work / "model", DevModelShape(family="llama"))
        wanted = args.stacks.split(",")
        sink = OTLPSink().start() if any(n.startswith("govllm-traced") for n in wanted) else None
        stacks = build_stacks(work, model_path, wanted, trace_endpoint=sink.url if sink else None,
                              omp_bind=args.layout.omp_threads_bind if args.layout else "auto")
        rounds: list[dict] = []
        endpoints = {}
        try:
            for stack in stacks:
                if not stack.view_of:
                    print(f"[bench] starting {stack.label}", file=sys.stderr, flush=True)
                    endpoints[stack.name] = stack.start(work)
            for stack in stacks:
                if stack.view_of:
                    endpoints[stack.name] = open_view(stack, {s.name: s for s in stacks}[stack.view_of], work)
            pinners = {s.name: pinning.TreePinner(s.proc.pid, args.layout) for s in stacks if args.layout}
            for stack in stacks:
                freeze(stack)
            for i in range(args.rounds):
                results = {}
                # alternate the order so no stack always runs first (after a pause) or last
                for stack in (stacks if i % 2 == 0 else stacks[::-1]):
                    base, key = endpoints[stack.name]
                    thaw(stack)
                    try:
                        for mode in (modes if i % 2 == 0 else modes[::-1]):
                            results[stack.name + mode] = measure_in_mode(
                                stack, base, key, args, pinners.get(stack.name) if mode else None,
                                tokenizer=model_path if args.vllm_bench else None)
                            print(f"[bench] round {i + 1}/{args.rounds} {stack.name + mode}: "
                                  + json.dumps({k: (v.as_dict() if isinstance(v, BenchResult) else v)
                                                for k, v in results[stack.name + mode].items()}),
                                  file=sys.stderr, flush=True)
                    finally:
                        freeze(stack)
                rounds.append(results)
            for stack in stacks:  # idle cost, each stack alone and warmed up
                if stack.view_of:
                    continue
                thaw(stack)
                wait_serving(*endpoints[stack.name])
                time.sleep(3)
                stack.idle_cpu_pct = idle_cpu_pct(stack, 10.0)
                freeze(stack)
            for stack in stacks:
                if stack.view_of:  # the same processes as the stack it views
                    stack.idle_cpu_pct = next(s.idle_cpu_pct for s in stacks if s.name == stack.view_of)
        finally:
            for stack in stacks:
                thaw(stack)
                stack.stop()
            if sink is not None:
                sink.stop()
    summary = summarise(rounds, stacks)
    if sink is not None:
        summary["spans_exported"], summary["span_exports"] = sink.spans, sink.requests
    publish(render_markdown(summary, args, started), summary, output=args.output, json_path=args.json)


if __name__ == "__main__":
    main()
