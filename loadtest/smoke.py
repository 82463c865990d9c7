"""`make loadtest`: a short headless run of every scenario against the local stack, then the report.

    python -m loadtest.smoke [--spec FILE] [--host URL] [--run-time 30s] [--out loadtest/results/smoke]

It finds what `make serve` created through the cluster spec (the development key in
`<state_dir>/dev-api-key`, the router address, the municipal tenants), issues the municipal
keys (`python -m loadtest.tenant_keys`, reused between runs), runs locust with one or two
users per scenario and the lenient smoke SLOs (loadtest/slo/smoke.yaml), and writes CSV, HTML,
JSON and the report under loadtest/results/. The exit status is locust's: 0 passed, 1 failed
requests, 3 an SLO gate failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cluster.spec.schema import SpecError, load_spec
from loadtest import tenant_keys
from loadtest.report import build_report

HERE = Path(__file__).resolve().parent
LOCUST = str(Path(sys.executable).with_name("locust"))
SMOKE_USERS = [  # one or two users of each scenario, whatever the weights
    {"user_class_name": "StaffChatUser", "fixed_count": 2},
    {"user_class_name": "DocumentTaskUser", "fixed_count": 1},
    {"user_class_name": "RagUser", "fixed_count": 1},
    {"user_class_name": "MunicipalApiUser", "fixed_count": 1},
    {"user_class_name": "MixedModelUser", "fixed_count": 1},
]


def ready(host: str) -> bool:
    try:
        with urllib.request.urlopen(host.rstrip("/") + "/readyz", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", help="cluster spec the stack runs (default: the embedded local spec)")
    parser.add_argument("--host", help="target URL (default: the spec's router address)")
    parser.add_argument("--run-time", default="30s")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/smoke"), help="result prefix")
    parser.add_argument("--slo-file", default=str(HERE / "slo" / "smoke.yaml"))
    args = parser.parse_args(argv)
    try:
        spec, _ = load_spec(args.spec)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    host = args.host or f"http://{spec.router.host}:{spec.router.port}"
    if not ready(host):
        print(f"{host}/readyz does not answer 200: start the stack first (`make serve`) or pass --host",
              file=sys.stderr)
        return 1
    key_file = Path(spec.state_dir) / "dev-api-key"
    if not key_file.exists():
        print(f"{key_file} not found: run from the directory `make serve` ran in", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tenants_file = args.out.parent / "tenant-keys.json"
    users = SMOKE_USERS
    municipalities = [t.id for t in spec.tenants if t.kind == "municipality"]
    if municipalities:
        spec_args = ["--spec", args.spec] if args.spec else []
        if tenant_keys.main([*spec_args, "--host", host, "-o", str(tenants_file)]) != 0:
            return 1
    else:
        users = [u for u in SMOKE_USERS if u["user_class_name"] != "MunicipalApiUser"]
        print("the spec declares no municipality: the municipal scenario is skipped")
    cmd = [
        LOCUST, "-f", str(HERE / "locustfile.py"), "--headless", "--host", host,
        "-u", str(sum(u["fixed_count"] for u in users)), "-r", "6", "-t", args.run_time,
        "--config-users", json.dumps(users),
        "--api-key-file", str(key_file), "--slo-file", args.slo_file,
        "--csv", str(args.out), "--csv-full-history", "--html", f"{args.out}.html",
        "--json-file", f"{args.out}_stats", "--only-summary",
    ]
    if municipalities:
        cmd += ["--tenant-keys", str(tenants_file)]
    code = subprocess.run(cmd).returncode
    try:
        md, _ = build_report(args.out)
        print(f"report: {md}")
    except FileNotFoundError as exc:
        print(f"no report: {exc}", file=sys.stderr)
        return code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
