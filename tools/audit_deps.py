"""pip-audit over the hashed locks, with a severity threshold and a reasoned allowlist.

    python tools/audit_deps.py [--fail-on low|moderate|high|critical] [--service pypi|osv]
                               [--allowlist locks/audit-allowlist.toml] LOCK...

`make audit-deps` runs it on locks/gpu.txt and locks/cpu.txt. It fails (exit 1) when:

* a vulnerability at or above ``--fail-on`` (default moderate) is not in the allowlist;
  severities come from the OSV record of the advisory (GitHub's rating); an advisory whose
  severity cannot be read counts as critical, never as harmless;
* a locked package could not be audited (pip-audit skipped it, or the vulnerability service
  was unreachable) and the allowlist has no ``[[unaudited]]`` entry for it: a scan that saw
  nothing is not a clean scan;
* an allowlist entry has no reason or has expired.

pip-audit itself needs the vulnerability service (PyPI's per-release JSON API or OSV): it
runs on a release host with that access, not in the offline test suite (docs/release.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEVERITIES = ("low", "moderate", "high", "critical")
OSV_VULN_URL = "https://api.osv.dev/v1/vulns/{id}"


class AllowlistError(ValueError):
    """The allowlist file breaks its rules (no reason, no expiry, unknown keys)."""


@dataclass(frozen=True)
class Allowlist:
    ignored: dict[str, str]      # advisory id -> package it is waived for
    unaudited: dict[str, tuple[str, str | None]]  # package -> (reason, only this version)


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_allowlist(path: Path | None, today: dt.date) -> Allowlist:
    """Parse and check the allowlist: every entry needs a reason and a future expiry date."""
    if path is None or not path.is_file():
        return Allowlist({}, {})
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"ignore", "unaudited"}
    if unknown:
        raise AllowlistError(f"{path}: unknown sections {sorted(unknown)}")
    ignored: dict[str, str] = {}
    unaudited: dict[str, tuple[str, str | None]] = {}
    for section, key in (("ignore", "id"), ("unaudited", "package")):
        for entry in data.get(section, []):
            label = f"{path}: [[{section}]] {entry.get(key, '?')}"
            if not str(entry.get(key, "")).strip():
                raise AllowlistError(f"{label}: needs `{key}`")
            if not str(entry.get("reason", "")).strip():
                raise AllowlistError(f"{label}: needs a `reason`")
            expires = entry.get("expires")
            if not isinstance(expires, dt.date):
                raise AllowlistError(f"{label}: needs `expires = YYYY-MM-DD`")
            if expires < today:
                raise AllowlistError(f"{label}: expired on {expires}; re-assess it")
            if section == "ignore":
                if not str(entry.get("package", "")).strip():
                    raise AllowlistError(f"{label}: needs `package`")
                ignored[entry["id"]] = entry["package"].lower()
            else:
                unaudited[entry["package"].lower()] = (entry["reason"], entry.get("version"))
    return Allowlist(ignored, unaudited)


def osv_severity(advisory_id: str, timeout: float = 20.0) -> str | None:
    """GitHub's severity rating from the advisory's OSV record, lower-case, or None."""
    try:
        with urllib.request.urlopen(OSV_VULN_URL.format(id=advisory_id), timeout=timeout) as r:
            record = json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    rating = str(record.get("database_specific", {}).get("severity", "")).lower()
    return rating if rating in SEVERITIES else None


def severity_of(vuln: dict, lookup: Callable[[str], str | None]) -> str | None:
    """The first rating found for the advisory or one of its aliases (GHSA ids carry one)."""
    for advisory in [vuln["id"], *vuln.get("aliases", [])]:
        rating = lookup(advisory)
        if rating:
            return rating
    return None


def evaluate(report: dict, allowlist: Allowlist, fail_on: str,
             lookup: Callable[[str], str | None]) -> Verdict:
    """Judge one pip-audit JSON report (``{"dependencies": [...]}``)."""
    verdict = Verdict()
    threshold = SEVERITIES.index(fail_on)
    for dep in report.get("dependencies", []):
        name = dep["name"].lower()
        # pip-audit names a skipped package's version only inside its reason: "... (1.2.3)".
        found = re.search(r"\(([^()\s]+)\)\s*$", dep.get("skip_reason", ""))
        version = dep.get("version") or (found.group(1) if found else None)
        where = f"{name}=={version}" if version else name
        if "skip_reason" in dep:
            reason, only = allowlist.unaudited.get(name, ("", None))
            if reason and only in (None, version):
                verdict.notes.append(f"{where}: not audited, allowed: {reason}")
            else:
                verdict.failures.append(f"{where}: could not be audited ({dep['skip_reason']})")
            continue
        for vuln in dep.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            waived = [i for i in ids if allowlist.ignored.get(i) == name]
            rating = severity_of(vuln, lookup)
            shown = rating or "unknown severity (counted as critical)"
            fixes = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
            line = f"{where}: {vuln['id']} [{shown}] fixed in {fixes}"
            if waived:
                verdict.notes.append(f"{line}: allowed ({waived[0]})")
            elif SEVERITIES.index(rating or "critical") >= threshold:
                verdict.failures.append(line)
            else:
                verdict.notes.append(f"{line}: below --fail-on {fail_on}")
    return verdict


def run_pip_audit(lock_file: Path, service: str) -> dict:
    """pip-audit's JSON report for a hashed lock; a failed run becomes skips, never a pass."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("pip-audit")), "--disable-pip",
             "--require-hashes", "-r", str(lock_file), "--vulnerability-service", service,
             "--format", "json", "--output", str(out), "--progress-spinner", "off"],
            capture_output=True, text=True)
        if out.is_file() and out.stat().st_size:
            return json.loads(out.read_text())
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"dependencies": [{"name": f"<all of {lock_file.name}>",
                              "skip_reason": f"pip-audit failed: {tail}"}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locks", nargs="+", type=Path)
    parser.add_argument("--allowlist", type=Path)
    parser.add_argument("--fail-on", choices=SEVERITIES, default="moderate")
    parser.add_argument("--service", choices=("pypi", "osv"), default="pypi")
    args = parser.parse_args(argv)
    try:
        allowlist = load_allowlist(args.allowlist, dt.date.today())
    except AllowlistError as exc:
        print(f"audit-deps: {exc}", file=sys.stderr)
        return 1
    failed = False
    for lock_file in args.locks:
        verdict = evaluate(run_pip_audit(lock_file, args.service), allowlist, args.fail_on,
                           osv_severity)
        for note in verdict.notes:
            print(f"{lock_file}: {note}")
        for failure in verdict.failures:
            print(f"{lock_file}: FAIL {failure}", file=sys.stderr)
        failed |= bool(verdict.failures)
        if not verdict.failures:
            print(f"{lock_file}: no known vulnerability at or above {args.fail_on}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
