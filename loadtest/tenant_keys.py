"""Write the municipal tenants' key file the locustfile reads (--tenant-keys / LOADTEST_TENANT_KEYS).

    python -m loadtest.tenant_keys --spec cluster/specs/local.yaml -o loadtest/results/tenant-keys.json

Keys are issued with the real `govllm keys create --json` (so they are ordinary tenant keys in
the shared store, subject to the tenant's limits), one per tenant, user `loadtest`. Without
--tenant, every tenant of kind `municipality` in the spec gets one. An existing file is reused
key by key when the target still accepts the key, so repeated runs do not pile up keys; pass
--fresh to issue new ones. The file is written with mode 0600: it holds secrets.

File format (also fine to write by hand for a remote target):

    {"tenants": [{"tenant": "sample-city", "key": "gvk_...", "key_id": "..."}, ...]}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cluster.spec.schema import SpecError, load_spec

GOVLLM = str(Path(sys.executable).with_name("govllm"))


def key_works(host: str, key: str) -> bool:
    """True when the target authenticates the key (GET /v1/models answers 200)."""
    req = urllib.request.Request(host.rstrip("/") + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def create_key(tenant: str, spec: str | None) -> dict[str, str]:
    """One key for `tenant` through `govllm keys create --json`."""
    cmd = [GOVLLM, "keys", "create", "--tenant", tenant, "--user", "loadtest",
           "--description", "locust load test", "--json"]
    if spec:
        cmd += ["--spec", spec]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"govllm keys create --tenant {tenant} failed: {out.stderr.strip()}")
    data = json.loads(out.stdout)
    return {"tenant": tenant, "key": data["key"], "key_id": data["key_id"]}


def write_key_file(path: Path, entries: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"tenants": entries}, fh, indent=2, ensure_ascii=False)
    os.chmod(path, 0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", help="cluster spec (default: the embedded local spec)")
    parser.add_argument("--tenant", action="append", default=[],
                        help="tenant id (repeatable; default: every municipality in the spec)")
    parser.add_argument("--host", help="target URL for checking reused keys (default: the spec's router)")
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("--fresh", action="store_true", help="issue new keys even if the file has working ones")
    args = parser.parse_args(argv)
    try:
        spec, _ = load_spec(args.spec)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    declared = {t.id: t for t in spec.tenants}
    tenants = args.tenant or [t.id for t in spec.tenants if t.kind == "municipality"]
    unknown = [t for t in tenants if t not in declared]
    if unknown or not tenants:
        print(f"tenants {unknown or '(none)'} are not declared municipalities of the spec; declared: "
              f"{', '.join(declared) or 'none'}", file=sys.stderr)
        return 1
    host = args.host or f"http://{spec.router.host}:{spec.router.port}"
    existing: dict[str, dict[str, str]] = {}
    if args.output.exists() and not args.fresh:
        try:
            existing = {e["tenant"]: e for e in json.loads(args.output.read_text())["tenants"]}
        except (ValueError, KeyError, TypeError):
            existing = {}
    entries = []
    for tenant in tenants:
        old = existing.get(tenant)
        if old and key_works(host, old["key"]):
            entries.append(old)
            continue
        try:
            entries.append(create_key(tenant, args.spec))
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
    write_key_file(args.output, entries)
    print(f"{args.output}: keys for {', '.join(e['tenant'] for e in entries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
