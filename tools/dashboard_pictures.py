"""The pictures of docs/observability.md: a local stack, a real Prometheus, traffic, then
every dashboard drawn from what Prometheus recorded (tools/render_dashboards.py).

    flock /tmp/govllm-stack.lock .venv/bin/python tools/dashboard_pictures.py --minutes 8 --out docs/img

What runs: `govllm serve` on the embedded default spec (two router replicas, three vLLM-CPU
engines) with four more tenants (two municipalities whose budgets run out during the run,
one village with tight per-minute limits, an agency without limits); Prometheus scraping
what `govllm metrics targets` lists, every 2 s, with the chart's rules loaded; seven
simulated users (streams, plain answers, embeddings, random prompt and answer lengths) and
one client with a bad key; then the pictures, and `govllm top` once. Uses the test suite's
stack and Prometheus helpers (tests/stack.py, tests/prometheus_server.py). Takes about
`--minutes` plus four.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.spec.schema import DEFAULT_SPEC_PATH  # noqa: E402
from govllm.runtime_env import free_port  # noqa: E402
from tests import stack as stacks  # noqa: E402
from tests.prometheus_server import NAMESPACE, PrometheusServer, render_rules  # noqa: E402
from tools.render_dashboards import DASHBOARDS, draw  # noqa: E402

TENANTS = [
    {"id": "minato-city", "name": "港市", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"requests_per_minute": 600, "monthly_token_budget": 60_000}},
    {"id": "kita-town", "name": "北町", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"requests_per_minute": 20, "monthly_token_budget": 9_000}},
    {"id": "nishi-village", "name": "西村", "kind": "municipality", "max_confidentiality": 1,
     "limits": {"requests_per_minute": 6, "tokens_per_minute": 400, "monthly_token_budget": 200_000}},
    {"id": "digital-agency", "name": "デジタル庁", "kind": "agency", "max_confidentiality": 2},
]
#: (tenant, mean seconds between requests, models)
USERS = [
    ("dev-local", 1.0, ["default", "tiny-qwen2-ja", "tiny-embed-ja"]),
    ("dev-local", 1.5, ["tiny-llama-ja"]),
    ("minato-city", 1.0, ["default", "tiny-qwen2-ja"]),
    ("minato-city", 2.0, ["tiny-embed-ja"]),
    ("kita-town", 1.5, ["tiny-llama-ja"]),
    ("nishi-village", 2.0, ["tiny-qwen2-ja"]),
    ("digital-agency", 1.2, ["tiny-llama-ja", "tiny-qwen2-ja"]),
]
PROMPTS = ["住民票の写しの交付手続を教えてください", "議事録を要約してください。" * 20,
           "介護保険の申請に必要な書類は何ですか", "子育て支援の制度を一覧にしてください"]


def _user(base_url: str, key: str, pace: float, models: list[str], stop: float) -> None:
    client = httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"})
    while time.time() < stop:
        model = random.choice(models)
        try:
            if model == "tiny-embed-ja":
                client.post(base_url + "/v1/embeddings", json={"model": model, "input": random.choice(PROMPTS)})
            else:
                body = {"model": model, "stream": random.random() < 0.85,
                        "max_tokens": random.choice([16, 32, 64, 128]),
                        "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}
                with client.stream("POST", base_url + "/v1/chat/completions", json=body) as resp:
                    for _ in resp.iter_bytes():
                        pass
        except httpx.HTTPError:
            pass
        time.sleep(random.expovariate(1 / pace))


def _refused(base_url: str, stop: float) -> None:
    while time.time() < stop:
        httpx.post(base_url + "/v1/chat/completions", json={}, timeout=30,
                   headers={"Authorization": "Bearer gvk_000000000000_not-a-key"})
        time.sleep(random.expovariate(1 / 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="govllm-pictures-"))
    spec = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())
    spec["state_dir"] = str(work / "state")
    spec["router"].update(port=free_port(), min_replicas=2, max_replicas=2)
    spec["store"] = {"embedded": True, "port": free_port()}
    spec["tenants"] += TENANTS
    stack = stacks.start(work, spec)
    try:
        prom_dir = work / "prometheus"
        prom_dir.mkdir()
        stack.cli("metrics", "targets", "--output", str(prom_dir / "raw.json"))
        groups = json.loads((prom_dir / "raw.json").read_text())
        for group in groups:  # as the Prometheus operator labels what a ServiceMonitor scrapes
            group["labels"]["namespace"] = NAMESPACE
        (prom_dir / "targets.json").write_text(json.dumps(groups))
        (prom_dir / "rules.yml").write_text(yaml.safe_dump(render_rules(prom_dir)))
        prometheus = PrometheusServer(prom_dir, prom_dir / "targets.json", rule_files=[prom_dir / "rules.yml"],
                                      interval="2s")
        keys = {t["id"]: stack.new_key(t["id"])[0] for t in TENANTS} | {"dev-local": stack.api_key}
        started = time.time()
        stop = started + args.minutes * 60
        threads = [threading.Thread(target=_user, args=(stack.base_url, keys[t], pace, models, stop))
                   for t, pace, models in USERS] + [threading.Thread(target=_refused, args=(stack.base_url, stop))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(25)  # the last exports (every 10 s) and budget reads (every 15 s)
        end = time.time()
        for path in sorted(DASHBOARDS.glob("*.json")):
            print(draw(json.loads(path.read_text()), prometheus.url, started, end, args.out), flush=True)
        print(f"data of {time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(started))} - "
              f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(end))} kept in {prom_dir / 'data'}")
        print(subprocess.run([str(Path(sys.executable).with_name("govllm")), "top", "--once", "--prometheus",
                              prometheus.url, "--window", "5m"], capture_output=True, text=True).stdout)
        prometheus.stop()
    finally:
        stacks.stop(stack)


if __name__ == "__main__":
    main()
