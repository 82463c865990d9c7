"""The locust suite against the real stack: every scenario, SLO gates, quota 429s, master + worker.

locust runs as a subprocess exactly as a load tester starts it (`locust -f
loadtest/locustfile.py --headless ...`); locust and gevent are never imported here. Each run
is a few seconds at one or two users per scenario. The load tests use their own tenants
(load-town, load-city-a, load-city-b in conftest.py) so they leave the tenancy tests' exact
counts alone.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from govllm.runtime_env import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCUSTFILE = str(ROOT / "loadtest" / "locustfile.py")
METRIC_ROWS = {"TTFT", "TPOT", "E2E", "TOKENS", "TOK/S", "GOODPUT"}
MODELS = {"tiny-llama-ja", "tiny-qwen2-ja"}
LENIENT_SLO = "per_request: {ttft_ms: 30000, tpot_ms: 2000, e2e_ms: 120000}\n" \
              "gates:\n  - {metric: error_rate, max: 0}\n  - {metric: goodput, min: 0.9}\n"
ONE_OF_EACH = json.dumps([{"user_class_name": name, "fixed_count": 1} for name in (
    "StaffChatUser", "DocumentTaskUser", "RagUser", "MunicipalApiUser", "MixedModelUser")])


def locust(stack, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """One headless run; the dev key comes from the environment, as a CI job would pass it."""
    cmd = [str(BIN / "locust"), "-f", LOCUSTFILE, "--host", stack.base_url, "--only-summary", *args]
    full_env = {**os.environ, "LOADTEST_API_KEY": stack.api_key, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def tenant_keys(stack, path: Path, *tenants: str) -> Path:
    args = [sys.executable, "-m", "loadtest.tenant_keys", "--spec", str(stack.spec_path),
            "--host", stack.base_url, "-o", str(path)]
    for t in tenants:
        args += ["--tenant", t]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert path.stat().st_mode & 0o077 == 0  # secrets: owner only
    return path


def stats_rows(prefix: Path) -> list[dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def final_counts(prefix: Path, kind: str) -> int:
    """Requests of one row type from --json-file (written at exit; the CSV lags by up to 1 s)."""
    entries = json.loads(Path(f"{prefix}_stats.json").read_text())
    return sum(e["num_requests"] for e in entries if e["method"] == kind)


def raw_records(prefix: Path) -> list[dict]:
    return [json.loads(line) for line in Path(f"{prefix}_requests.jsonl").read_text().splitlines()]


def explain(out: subprocess.CompletedProcess) -> str:
    return f"exit {out.returncode}\n{out.stderr[-4000:]}"


def test_every_scenario_reports_llm_metrics_per_model(stack, tmp_path):
    keys = tenant_keys(stack, tmp_path / "keys.json", "load-town")
    (tmp_path / "slo.yaml").write_text(LENIENT_SLO)
    prefix = tmp_path / "all"
    out = locust(stack, "--headless", "-u", "5", "-r", "5", "-t", "10s", "--config-users", ONE_OF_EACH,
                 "--csv", str(prefix), "--html", f"{prefix}.html", "--json-file", f"{prefix}_stats",
                 "--think-time", "0.2-0.5", "--output-tokens", "16-48", "--doc-output-tokens", "32-64",
                 "--chat-turns", "2-2",
                 env={"LOADTEST_TENANT_KEYS": str(keys), "LOADTEST_SLO_FILE": str(tmp_path / "slo.yaml")})
    assert out.returncode == 0, explain(out)
    for suffix in ("_stats.csv", "_stats_history.csv", ".html", "_stats.json", "_summary.json", "_requests.jsonl"):
        assert Path(f"{prefix}{suffix}").stat().st_size > 0, suffix

    # custom metrics are locust request rows, per scenario and per (requested > answering) model
    rows = stats_rows(prefix)
    metric_rows = [r for r in rows if r["Type"] in METRIC_ROWS]
    scenarios = {"staff_chat", "document", "rag", "municipal/load-town", "mixed"}
    for scenario in scenarios:
        kinds = {r["Type"] for r in metric_rows if r["Name"].startswith(scenario + " ")}
        assert kinds == METRIC_ROWS, (scenario, kinds)
    mixed_models = {r["Name"].split(">")[-1].split()[-1] for r in metric_rows if r["Name"].startswith("mixed ")}
    assert mixed_models == MODELS  # /v1/models discovery reached both models, via ids and aliases
    assert {"mixed default>tiny-llama-ja", "mixed qwen2>tiny-qwen2-ja"} & {r["Name"] for r in metric_rows}
    assert all(r["Failure Count"] == "0" for r in rows)
    html = Path(f"{prefix}.html").read_text()
    assert "TTFT" in html and "tiny-qwen2-ja" in html and "GOODPUT" in html

    # one raw record per request, consistent with locust's own counts
    records = raw_records(prefix)
    ok = [r for r in records if r["outcome"] == "ok"]
    assert len(ok) == len(records) == final_counts(prefix, "TTFT")
    for r in ok:
        assert 0 < r["ttft_ms"] <= r["e2e_ms"] and r["model"] in MODELS
        if r["output_tokens"] >= 2:
            assert r["tpot_ms"] == pytest.approx((r["e2e_ms"] - r["ttft_ms"]) / (r["output_tokens"] - 1))
    # lengths are controlled: exact output counts (min_tokens), documents filled to the context
    chat = [r for r in ok if r["scenario"] != "document"]
    assert all(16 <= r["output_tokens"] <= 48 for r in chat)
    docs = [r for r in ok if r["scenario"] == "document"]
    assert docs and all(1000 <= r["prompt_tokens"] <= 2048 - 32 for r in docs), [r["prompt_tokens"] for r in docs]

    # the summary's percentiles are exact (numpy over the raw log), not locust's buckets
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert set(summary["scenarios"]) == scenarios and set(summary["models"]) == MODELS
    for model in MODELS:
        ttfts = [r["ttft_ms"] for r in ok if r["model"] == model]
        assert summary["models"][model]["ttft_ms"]["p90"] == pytest.approx(np.percentile(ttfts, 90))
    assert summary["slo"]["passed"] is True and summary["overall"]["goodput"] is not None

    # the report command turns the run into plots and a Markdown summary
    rep = subprocess.run([sys.executable, "-m", "loadtest.report", str(prefix)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert rep.returncode == 0, rep.stderr
    for name in ("latency", "throughput", "models"):
        assert Path(f"{prefix}_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = Path(f"{prefix}_report.md").read_text()
    assert "SLO gates: PASSED" in md and all(m in md for m in MODELS) and "municipal/load-town" in md


def test_an_impossible_slo_fails_the_run(stack, tmp_path):
    (tmp_path / "slo.yaml").write_text("gates:\n  - {metric: ttft_ms, stat: p50, max: 0.001}\n")
    prefix = tmp_path / "gate"
    out = locust(stack, "--headless", "-u", "1", "-r", "1", "-t", "4s", "--tags", "chat",
                 "--think-time", "0.1-0.2", "--output-tokens", "8-8", "--csv", str(prefix),
                 "--slo-file", str(tmp_path / "slo.yaml"))
    assert out.returncode == 3, explain(out)
    assert "SLO FAIL: ttft_ms p50 <= 0.001" in out.stderr
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["slo"]["passed"] is False and summary["overall"]["ok"] > 0
    assert set(summary["scenarios"]) == {"staff_chat"}  # --tags chat selected one scenario
    # the stored run can be re-gated by the report command with the same verdict
    rep = subprocess.run([sys.executable, "-m", "loadtest.report", str(prefix), "--slo-file",
                          str(tmp_path / "slo.yaml")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert rep.returncode == 3, rep.stderr


def test_quota_429s_are_their_own_outcome_not_failures(stack, tmp_path):
    keys = tenant_keys(stack, tmp_path / "keys.json", "load-city-a", "load-city-b")  # 1,500 tokens a month
    (tmp_path / "slo.yaml").write_text(
        "gates:\n  - {metric: error_rate, max: 0}\n  - {metric: quota_rate, min: 0.1}\n")
    prefix = tmp_path / "quota"
    out = locust(stack, "--headless", "-u", "2", "-r", "2", "-t", "8s", "--tags", "municipal",
                 "--tenant-keys", str(keys), "--think-time", "0.1-0.2", "--output-tokens", "40-60",
                 "--quota-backoff-max", "0.5", "--csv", str(prefix), "--json-file", f"{prefix}_stats",
                 "--slo-file", str(tmp_path / "slo.yaml"))
    assert out.returncode == 0, explain(out)
    rows = stats_rows(prefix)
    quota = [r for r in rows if r["Type"] == "QUOTA"]
    assert {r["Name"].split()[0] for r in quota} == {"municipal/load-city-a", "municipal/load-city-b"}
    assert all(r["Name"].endswith("monthly_token_budget_exceeded") for r in quota)
    assert all(r["Failure Count"] == "0" for r in rows)
    records = raw_records(prefix)
    assert {r["outcome"] for r in records} == {"ok", "quota"}
    assert all(r["status"] == 429 and r["tenant"] in ("load-city-a", "load-city-b")
               for r in records if r["outcome"] == "quota")
    refused = sum(1 for r in records if r["outcome"] == "quota")
    assert refused == final_counts(prefix, "QUOTA") > 0
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["overall"]["error"] == 0 and summary["overall"]["quota"] == refused
    assert summary["slo"]["passed"] is True
    # the budget held: what was served fits the two tenants' caps
    served = sum(r["prompt_tokens"] + r["output_tokens"] for r in records if r["outcome"] == "ok")
    assert served <= 2 * 1500


def test_master_and_worker_on_one_machine_replay_a_day(stack, tmp_path):
    port = free_port()
    prefix = tmp_path / "day"
    # the worker gets no key of its own: the master forwards its options (key, shape, lengths)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADTEST_")}
    worker = subprocess.Popen([str(BIN / "locust"), "-f", LOCUSTFILE, "--worker", "--master-host", "127.0.0.1",
                               "--master-port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = locust(stack, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                     "--expect-workers", "1", "--expect-workers-max-wait", "60", "--headless",
                     "-u", "3", "--shape", "day", "--day-seconds", "8", "--tags", "chat",
                     "--think-time", "0.1-0.3", "--output-tokens", "8-16", "--csv", str(prefix),
                     "--csv-full-history", "--json-file", f"{prefix}_stats")
        worker_log, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert out.returncode == 0, explain(out)
    assert worker.returncode == 0, worker_log[-3000:]
    records = raw_records(prefix)
    # the master wrote the raw log from what the worker reported, not from its own users
    assert records and {r["worker"] for r in records} == {f"{socket.gethostname()}-{worker.pid}"}
    assert len(records) == final_counts(prefix, "TTFT")
    shape = json.loads(Path(f"{prefix}_summary.json").read_text())["run"]["shape"]
    assert shape["shape"] == "day" and shape["headcount"] == 180_000 and 0 < shape["scale"] < 1
    with open(f"{prefix}_stats_history.csv", newline="") as fh:
        users = {int(r["User Count"]) for r in csv.DictReader(fh) if r["Name"] == "Aggregated"}
    assert max(users) == 3 and len(users - {0}) >= 2  # the curve rose and fell over the day
