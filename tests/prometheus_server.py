"""A real Prometheus for tests, and the chart's rules rendered by the real helm.

`prometheus` and `promtool` come from the Debian package (`make prometheus-tools`, which
`make test` runs). The server listens on 127.0.0.1 with its own data directory, scrapes the
targets of a file_sd file, and loads rule files; queries go through its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from govllm.runtime_env import free_port

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "govllm"
SPEC = ROOT / "cluster" / "specs" / "gov-cloud-example.yaml"
HELM = Path(sys.executable).parent / "helm"
NAMESPACE = "govllm"


def tool(name: str) -> str:
    """The venv's copy (`make prometheus-tools`), else one on PATH."""
    venv = Path(sys.executable).parent / name
    path = str(venv) if venv.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run `make prometheus-tools` (the Debian prometheus package)")
    return path


def render_chart(tmp_path: Path, *set_json: str, show: str = "templates/prometheusrule.yaml",
                 enable: bool = True) -> list[dict]:
    """One template of the chart as the real helm renders it with the example plan and (`enable`)
    metrics.prometheusRule and metrics.grafanaDashboard on; `set_json`: more --set-json."""
    from cluster.render.helm_values import helm_values, render_text
    from cluster.spec.schema import load_spec

    spec, spec_dir = load_spec(SPEC)
    plan = tmp_path / "plan.yaml"
    plan.write_text(render_text(helm_values(spec, spec_dir, source=SPEC.name), source=SPEC.name))
    args = [str(HELM), "template", "govllm", str(CHART), "--namespace", NAMESPACE, "-f", str(plan),
            "--set", "dataPlane.existingSecret=govllm-data-plane",
            "--set", "vendorCA.existingConfigMap=govllm-vendor-ca", "--show-only", show]
    if enable:
        args += ["--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.grafanaDashboard.enabled=true"]
    for s in set_json:  # --set-json: `--set` reads 0.5 as a string
        args += ["--set-json", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_rules(tmp_path: Path, *set_json: str) -> dict:
    """The PrometheusRule's spec: `{"groups": [...]}`, a valid Prometheus rule file."""
    (rule,) = render_chart(tmp_path, *set_json)
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    return rule["spec"]


class PrometheusServer:
    """`prometheus` on 127.0.0.1: file_sd targets, rule files, scrape and rule interval `interval`."""

    def __init__(self, workdir: Path, targets_file: Path, *, rule_files: list[Path] = (),
                 interval: str = "1s"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "govllm",
                                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "2s"}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-lifecycle", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(workdir / 'prometheus.log').read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        pytest.fail("prometheus did not become ready in 30 s")

    def api(self, path: str, **params: str) -> dict:
        data = urllib.parse.urlencode(params).encode() if params else None
        req = urllib.request.Request(self.url + "/api/v1/" + path, data=data)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400: the query did not parse; say why
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        return self.api("query", query=promql)["result"]

    def query_range(self, promql: str, start: float, end: float, step: float = 2.0) -> list[dict]:
        return self.api("query_range", query=promql, start=str(start), end=str(end), step=str(step))["result"]

    def wait_for(self, promql: str, timeout_s: float = 40.0) -> list[dict]:
        """Poll until the query returns something (Ray exports every 10 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
