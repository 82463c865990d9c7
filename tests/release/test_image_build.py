"""Build the CPU image from the Dockerfile and run `govllm serve --help` inside it.

These machines reach no container registry, so the pinned python base cannot be pulled: the
same base (Debian 12 and its Python 3.11) is assembled from Debian packages with debootstrap
(`tools/image.py debian-base`) and the real Dockerfile is built on it with buildah, from the
hash-checked wheelhouse of locks/cpu.txt. About five minutes on these machines, so it runs in
`make test-image` (GOVLLM_IMAGE_TEST=1), not in `make test`; docs/release.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = [sys.executable, str(ROOT / "tools" / "image.py")]
BASE = "localhost/govllm-base:bookworm-test"
TAG = "localhost/govllm/govllm:image-test-cpu"

pytestmark = [
    pytest.mark.skipif(os.environ.get("GOVLLM_IMAGE_TEST") != "1",
                       reason="image build takes minutes: `make test-image` runs it"),
    pytest.mark.timeout(1200),
]


@pytest.fixture(scope="module")
def built_image():
    missing = [t for t in ("buildah", "debootstrap") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (`make image-tools` installs them)")
    subprocess.run([*TOOL, "debian-base", "--tag", BASE], check=True, timeout=900)
    try:
        subprocess.run([*TOOL, "build", "--variant", "cpu", "--builder", "buildah",
                        "--base-image", BASE, "--tag", TAG], check=True, timeout=1200)
        yield TAG
    finally:
        for ref in (TAG, BASE):
            subprocess.run(["buildah", "rmi", ref], capture_output=True)


def test_govllm_serve_help_runs_in_the_cpu_image(built_image):
    proc = subprocess.run([*TOOL, "run", built_image, "--", "govllm", "serve", "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Usage" in proc.stdout and "serve" in proc.stdout


def test_the_image_runs_as_the_charts_numeric_user_without_compilers(built_image):
    proc = subprocess.run([*TOOL, "run", built_image, "--", "sh", "-c",
                           "id -u; id -g; command -v gcc cc g++ c++ || echo none"],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["1000", "100", "none"], proc.stdout + proc.stderr


def test_oci_labels_name_version_and_revision(built_image):
    fmt = "{{range $k, $v := .OCIv1.Config.Labels}}{{$k}}={{$v}}\n{{end}}"
    out = subprocess.run(["buildah", "inspect", "--format", fmt, built_image],
                         capture_output=True, text=True, check=True).stdout
    labels = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    import image
    assert labels["org.opencontainers.image.version"] == image.project_version()
    assert labels["org.opencontainers.image.revision"] == image.revision()
    assert labels["io.govllm.variant"] == "cpu"
