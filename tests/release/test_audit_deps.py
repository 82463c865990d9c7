"""`make audit-deps` (tools/audit_deps.py): how pip-audit's reports are judged, the allowlist's
rules, and that a scan which could not reach its vulnerability service fails instead of
passing. The reports below have pip-audit's JSON shape; the real service is not reachable
from these machines (docs/release.md), so no test reads it."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import audit_deps
import lock
import pytest

ROOT = Path(__file__).resolve().parents[2]
TODAY = dt.date(2026, 12, 1)
RATINGS = {"GHSA-high-0001": "high", "GHSA-low-0001": "low"}


def report(*deps: dict) -> dict:
    return {"dependencies": list(deps), "fixes": []}


def vuln(vid: str, *aliases: str) -> dict:
    return {"id": vid, "aliases": list(aliases), "fix_versions": ["9.9"], "description": "x"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "allow.toml"
    path.write_text(text)
    return path


def test_threshold_allowlist_and_unknown_severity():
    allow = audit_deps.Allowlist({"GHSA-high-0001": "ray"}, {})
    rep = report(
        {"name": "ray", "version": "2.60.0", "vulns": [vuln("PYSEC-1", "GHSA-high-0001")]},
        {"name": "aiohttp", "version": "3.0", "vulns": [vuln("PYSEC-2", "GHSA-high-0001")]},
        {"name": "idna", "version": "3.2", "vulns": [vuln("GHSA-low-0001")]},
        {"name": "jinja2", "version": "3.0", "vulns": [vuln("PYSEC-3")]},
        {"name": "pyyaml", "version": "6.0", "vulns": []},
    )
    verdict = audit_deps.evaluate(rep, allow, "moderate", RATINGS.get)
    failed = sorted(f.split(":")[0] for f in verdict.failures)
    # the waiver is for ray only; an unrated advisory counts as critical; low is below the bar
    assert failed == ["aiohttp==3.0", "jinja2==3.0"]
    assert any("ray==2.60.0" in n and "allowed" in n for n in verdict.notes)
    assert any("idna==3.2" in n and "below" in n for n in verdict.notes)
    strict = audit_deps.evaluate(rep, allow, "low", RATINGS.get)
    assert len(strict.failures) == 3


def test_a_package_that_was_not_audited_fails_unless_waived_for_that_version():
    skipped = {"name": "torch", "skip_reason":
               "Dependency not found on PyPI and could not be audited: torch (2.13.0+cpu)"}
    bare = audit_deps.evaluate(report(skipped), audit_deps.Allowlist({}, {}), "high", RATINGS.get)
    assert bare.failures == [f"torch==2.13.0+cpu: could not be audited ({skipped['skip_reason']})"]
    waived = audit_deps.Allowlist({}, {"torch": ("local build", "2.13.0+cpu")})
    assert not audit_deps.evaluate(report(skipped), waived, "high", RATINGS.get).failures
    other = audit_deps.Allowlist({}, {"torch": ("local build", "2.14.0+cpu")})
    assert audit_deps.evaluate(report(skipped), other, "high", RATINGS.get).failures


@pytest.mark.parametrize("entry, message", [
    ('[[ignore]]\nid = "GHSA-1"\npackage = "ray"\nexpires = 2027-01-01\n', "reason"),
    ('[[ignore]]\nid = "GHSA-1"\npackage = "ray"\nreason = " "\nexpires = 2027-01-01\n', "reason"),
    ('[[ignore]]\nid = "GHSA-1"\npackage = "ray"\nreason = "r"\n', "expires"),
    ('[[ignore]]\nid = "GHSA-1"\npackage = "ray"\nreason = "r"\nexpires = 2026-11-30\n', "expired"),
    ('[[ignore]]\nid = "GHSA-1"\nreason = "r"\nexpires = 2027-01-01\n', "package"),
    ('[[ignores]]\nid = "GHSA-1"\n', "unknown"),
])
def test_allowlist_rules(tmp_path, entry, message):
    with pytest.raises(audit_deps.AllowlistError, match=message):
        audit_deps.load_allowlist(write(tmp_path, entry), TODAY)


def test_the_committed_allowlist_is_valid():
    allow = audit_deps.load_allowlist(ROOT / "locks/audit-allowlist.toml", dt.date.today())
    pins = lock.read_pins(lock.LOCKS / "cpu.txt")
    for package, (_, only) in allow.unaudited.items():
        assert only is None or str(pins[package]) == only, (package, only)


def test_an_unreachable_vulnerability_service_fails_the_audit(tmp_path):
    """A real pip-audit run whose HTTPS goes to a closed local port: the audit must fail and
    say the lock was not audited, never report it clean."""
    text = (lock.LOCKS / "gpu.txt").read_text()
    start = text.index("\nidna==") + 1
    end = text.index("\n    # via", start)
    one = tmp_path / "one.txt"
    one.write_text(text[start:end] + "\n")
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "tools/audit_deps.py"), str(one)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "could not be audited" in proc.stderr and "no known vulnerability" not in proc.stdout
