"""One version: pyproject.toml's. The chart's appVersion, its default image tag and the tag
`make image` builds all follow it; a disagreement fails here."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import image
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "govllm"
HELM = Path(sys.executable).with_name("helm")


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_chart_app_version_is_the_project_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version(), (
        "helm/govllm/Chart.yaml appVersion differs from pyproject.toml's version")


def test_values_leave_the_tag_to_the_app_version():
    values = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    assert values["tag"] in ("", version()), "values.yaml image.tag must be empty (appVersion)"


def test_rendered_images_and_make_image_tag_agree(tmp_path):
    from cluster.render.helm_values import helm_values, render_text
    from cluster.spec.schema import load_spec

    if not HELM.is_file():
        pytest.fail(f"{HELM} is missing: run `make install`")
    cluster_spec, spec_dir = load_spec(ROOT / "cluster/specs/gov-cloud-example.yaml")
    plan = tmp_path / "plan.yaml"
    plan.write_text(render_text(helm_values(cluster_spec, spec_dir, source="x"), source="x"))
    from tests.component.test_helm_chart import SITE  # what every install sets (operations.md)

    proc = subprocess.run([str(HELM), "template", "x", str(CHART), "-f", str(plan), *SITE],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    repo = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    images = {line.split("image:", 1)[1].strip().strip('"') for line in proc.stdout.splitlines()
              if line.strip().startswith("image:") and repo in line}
    assert images == {f"{repo}:{version()}"}
    assert image.default_tag("gpu") == f"{repo}:{version()}"
    assert image.default_tag("cpu") == f"{repo}:{version()}-cpu"
