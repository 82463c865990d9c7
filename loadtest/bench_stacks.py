"""`make bench`: three serving stacks, one machine, one run.

(a) vLLM's own OpenAI server started directly, (b) stock Ray Serve LLM
`build_openai_app`, (c) govllm's full stack with authentication on; all
serve the same generated 2-layer Llama model with the same engine arguments
and get the same requests (streaming chat, 32 output tokens, greedy,
`ignore_eos`).

These 2-core machines are noisy, so stacks run one at a time, alone, in
several rounds, and the report gives medians across rounds plus the ratio of
(c) to (a) within each round; timing claims are those ratios, never absolute
numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
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
from cluster.spec import DEFAULT_SPEC_PATH
from loadtest.serving_bench import BenchResult, run_bench

MODEL_ID = "tiny-llama-ja"
MAX_MODEL_LEN = 2048
GOVLLM = str(Path(sys.executable).with_name("govllm"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def start(self, log_dir: Path) -> tuple[str, str | None]:
        env = {**os.environ, **self.env}
        log = (log_dir / f"{self.name}.log").open("a")
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


def build_stacks(work: Path, model_path: Path, wanted: list[str]) -> list[Stack]:
    """Stacks by name; `govllm@KEY=VAL;KEY2=VAL2` is the govllm stack with extra environment."""
    py = sys.executable
    cpu_env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    spec["models"] = [m for m in spec["models"] if m["id"] == MODEL_ID]
    spec["models"][0]["source"] = {"path": str(model_path)}
    spec["models"][0]["aliases"] = []
    spec["aliases"] = {}
    spec["state_dir"] = str(work / "govllm-state")
    spec["auth"]["key_store_path"] = str(work / "govllm-state" / "keys.json")
    govllm_port = _free_port()
    spec["router"]["port"] = govllm_port
    spec_path = work / "bench-spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
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
            _, _, extra = name.partition("@")
            env = dict(kv.split("=", 1) for kv in extra.split(";") if kv)
            stack = Stack(
                name, "(c) govllm full stack, auth on" + (f" [{extra}]" if extra else ""),
                [GOVLLM, "serve", "--spec", str(spec_path)],
                env=env, ready_path="/readyz",
                api_key_file=work / "govllm-state" / "dev-api-key", cwd=work, port=govllm_port,
            )
        else:
            stack = all_stacks[name]
            stack.port = _free_port()
        stacks.append(stack)
    return stacks


async def measure(base: str, key: str | None, *, requests: int, sequential: int) -> dict[str, BenchResult]:
    seq = await run_bench("c1", base, model=MODEL_ID, api_key=key, concurrency=1, requests=sequential, warmup=4)
    par = await run_bench("c16", base, model=MODEL_ID, api_key=key, concurrency=16, requests=requests, warmup=32)
    return {"c1": seq, "c16": par}


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
        }
    if "direct" in out["stacks"]:
        for stack in stacks:
            if stack.name == "direct":
                continue
            per_round = [
                {
                    "ttft_c1": r[stack.name]["c1"].ttft_p50_ms / r["direct"]["c1"].ttft_p50_ms,
                    "throughput_c16": r[stack.name]["c16"].throughput_rps / r["direct"]["c16"].throughput_rps,
                }
                for r in rounds
                if stack.name in r and "direct" in r
            ]
            out["ratios"][stack.name] = {
                "ttft_c1_vs_direct": statistics.median(x["ttft_c1"] for x in per_round),
                "throughput_c16_vs_direct": statistics.median(x["throughput_c16"] for x in per_round),
                "per_round": per_round,
            }
    return out


def render_markdown(summary: dict, args: argparse.Namespace, started: str) -> str:
    lines = [
        f"### Run of {started}",
        "",
        f"`{' '.join(['python -m loadtest.bench_stacks'] + sys.argv[1:])}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), {args.rounds} round(s); "
        f"model: generated 2-layer Llama (hidden 128), float32, vLLM-CPU; streaming chat, "
        f"32 output tokens, greedy, `ignore_eos`. c1 = one request at a time ({args.sequential} requests), "
        f"c16 = 16 concurrent ({args.requests} requests). Medians across rounds.",
        "",
        "| stack | TTFT p50 c1 | latency p50 c1 | TTFT p50 c16 | latency p50 c16 | throughput c16 (min-max) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary["stacks"].values():
        lo, hi = s["throughput_range"]
        lines.append(
            f"| {s['label']} | {s['ttft_p50_ms_c1']:.1f} ms | {s['latency_p50_ms_c1']:.1f} ms | "
            f"{s['ttft_p50_ms_c16']:.1f} ms | {s['latency_p50_ms_c16']:.1f} ms | "
            f"{s['throughput_rps_c16']:.1f} req/s ({lo:.0f}-{hi:.0f}) | {s['errors']} |"
        )
    if summary["ratios"]:
        lines += ["", "Ratios to (a), computed within each round, median across rounds:", "",
                  "| stack | TTFT c1 / direct | throughput c16 / direct | per round (TTFT, throughput) |",
                  "|---|---|---|---|"]
        for name, r in summary["ratios"].items():
            per = "; ".join(f"{x['ttft_c1']:.2f}, {x['throughput_c16']:.2f}" for x in r["per_round"])
            lines.append(
                f"| {summary['stacks'][name]['label']} | {r['ttft_c1_vs_direct']:.2f}x | "
                f"{r['throughput_c16_vs_direct']:.2f}x | {per} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", default="direct,stock,govllm",
                        help="Comma list of: direct, stock, stock-nobatch, govllm, "
                             "govllm@KEY=VAL;KEY=VAL (govllm with extra environment, for experiments).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=320, help="Requests at concurrency 16.")
    parser.add_argument("--sequential", type=int, default=48, help="Requests at concurrency 1.")
    parser.add_argument("--output", type=Path, help="Markdown file to append the results to.")
    parser.add_argument("--json", type=Path, help="Write the raw summary here.")
    args = parser.parse_args()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="govllm-bench-") as tmp:
        work = Path(tmp)
        model_path = generate(work / "model", DevModelShape(family="llama"))
        stacks = build_stacks(work, model_path, args.stacks.split(","))
        rounds: list[dict] = []
        for i in range(args.rounds):
            results = {}
            for stack in stacks:
                print(f"[bench] round {i + 1}/{args.rounds}: {stack.label}", file=sys.stderr, flush=True)
                try:
                    base, key = stack.start(work)
                    results[stack.name] = asyncio.run(
                        measure(base, key, requests=args.requests, sequential=args.sequential)
                    )
                    print("[bench]   " + json.dumps({k: v.as_dict() for k, v in results[stack.name].items()}),
                          file=sys.stderr, flush=True)
                finally:
                    stack.stop()
            rounds.append(results)
    summary = summarise(rounds, stacks)
    text = render_markdown(summary, args, started)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.output:
        with args.output.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
