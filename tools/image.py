"""Build govllm's container image with whichever builder is present (`make image`).

    python tools/image.py build --variant gpu|cpu [--builder docker|podman|buildah]
                                [--base-image REF] [--tag REF]
    python tools/image.py debian-base --tag localhost/govllm-base:bookworm   (buildah only)
    python tools/image.py run IMAGE -- govllm serve --help
    python tools/image.py pin-base        (needs skopeo and registry access)

Why a wheelhouse: `build` downloads the hash-checked wheels of ``locks/<variant>.txt`` (and
builds the govllm wheel) on the host, where pip's own configuration applies (the CPU torch
comes from the configured find-links), then the Dockerfile installs from it with
``--no-index --require-hashes``. The build step itself needs no network, which is also how
an air-gapped build host works (docs/release.md).

Why ``debian-base``: where no registry holding ``python:3.11-slim-bookworm`` is reachable
(these machines reach only package registries), the same base (Debian 12, its Python 3.11)
is assembled from Debian packages with debootstrap and handed to ``build --base-image``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lock  # noqa: E402  (tools/lock.py: lock paths and target platform)

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / "build" / "wheelhouse"
DOCKERFILE = ROOT / "Dockerfile"
BUILDERS = ("docker", "podman", "buildah")
BASE_REPOSITORY = "docker.io/library/python:3.11-slim-bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


class NoBuilderError(RuntimeError):
    """No container builder is installed (or docker has no engine to talk to)."""


def project_version() -> str:
    """The one version: pyproject.toml's; chart and image tags follow it."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def default_tag(variant: str) -> str:
    """``<chart image.repository>:<version>`` (``-cpu`` suffix for the CPU variant)."""
    values = yaml.safe_load((ROOT / "helm/govllm/values.yaml").read_text())
    suffix = "" if variant == "gpu" else f"-{variant}"
    return f"{values['image']['repository']}:{project_version()}{suffix}"


def find_builder(preferred: str | None = None) -> str:
    """The first usable builder; docker counts only when its engine answers."""
    for name in (preferred,) if preferred else BUILDERS:
        path = shutil.which(name)
        if not path:
            continue
        if name == "docker":
            ok = subprocess.run([path, "info"], capture_output=True, timeout=60).returncode == 0
            if not ok:
                continue
        return name
    raise NoBuilderError(
        "no container builder found: `make image` needs docker (with a running engine), "
        "podman or buildah; on Debian/Ubuntu `apt-get install buildah` (docs/release.md)")


def pip_env(variant: str) -> dict[str, str]:
    """pip's environment for the wheel download.

    The GPU set must not see the configured find-links or its torch cap: ``torch==2.13.0``
    would match a local ``2.13.0+cpu`` wheel first and then fail its hash.
    """
    env = dict(os.environ)
    if variant == "gpu":
        env.pop("PIP_FIND_LINKS", None)
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


def target_flags() -> list[str]:
    """pip flags that select wheels for the image's platform, whatever the host is."""
    flags = ["--only-binary=:all:", "--python-version", lock.PYTHON_VERSION,
             "--implementation", "cp", "--abi", "cp311"]
    for tag in lock.manylinux_platform_tags():
        flags += ["--platform", tag]
    return flags


def fill_wheelhouse(variant: str) -> Path:
    """build/wheelhouse/: the lock as ``<variant>.txt``, its wheels, the govllm wheel."""
    lock_file = lock.LOCKS / f"{variant}.txt"
    if WHEELHOUSE.exists():
        shutil.rmtree(WHEELHOUSE)
    WHEELHOUSE.mkdir(parents=True)
    shutil.copy(lock_file, WHEELHOUSE / f"{variant}.txt")
    py = sys.executable
    subprocess.run([py, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                    *target_flags(), "-r", str(lock_file), "-d", str(WHEELHOUSE)],
                   check=True, env=pip_env(variant))
    subprocess.run([py, "-m", "pip", "wheel", "--quiet", "--no-deps", str(ROOT),
                    "-w", str(WHEELHOUSE)], check=True)
    return WHEELHOUSE


def revision() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def buildah_isolation() -> str:
    """BUILDAH_ISOLATION, else chroot: it needs no cgroup controllers (the OCI runtime's
    default fails on hosts with hybrid cgroups, as on the project's machines), and the build
    runs nothing but pip on a local wheelhouse."""
    return os.environ.get("BUILDAH_ISOLATION", "chroot")


def build_command(builder: str, variant: str, tag: str, base_image: str | None) -> list[str]:
    """The builder's command line for the Dockerfile's runtime stage."""
    args = {"VARIANT": variant, "VERSION": project_version(), "REVISION": revision()}
    if base_image:
        args["BASE_IMAGE"] = base_image
    cmd = [builder, "bud" if builder == "buildah" else "build", "-f", str(DOCKERFILE),
           "--target", "runtime", "-t", tag]
    if builder == "buildah":
        cmd += ["--isolation", buildah_isolation()]
    if base_image and base_image.startswith("localhost/") and builder != "docker":
        cmd.append("--pull=never")  # a locally assembled base (debian-base): no registry
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    return cmd + [str(ROOT)]


def build(variant: str, builder: str | None, tag: str | None, base_image: str | None) -> str:
    tool = find_builder(builder)
    tag = tag or default_tag(variant)
    fill_wheelhouse(variant)
    subprocess.run(build_command(tool, variant, tag, base_image), check=True, cwd=ROOT)
    print(f"built {tag} with {tool}")
    return tag


def debian_base(tag: str) -> str:
    """Debian 12 + Python 3.11 from Debian packages, committed as ``tag`` (buildah)."""
    for tool in ("buildah", "debootstrap"):
        if not shutil.which(tool):
            raise NoBuilderError(f"debian-base needs {tool} (apt-get install {tool})")
    ctr = subprocess.run(["buildah", "from", "scratch"], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        mnt = subprocess.run(["buildah", "mount", ctr], check=True, capture_output=True,
                             text=True).stdout.strip()
        subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=python3,python3-venv,ca-certificates", "bookworm", mnt,
                        DEBIAN_MIRROR], check=True, stdout=subprocess.DEVNULL)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in Path(mnt, leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        subprocess.run(["buildah", "umount", ctr], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["buildah", "config", "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", ctr],
                       check=True)
        subprocess.run(["buildah", "commit", "--quiet", ctr, tag], check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    return tag


def run(image: str, command: list[str], builder: str | None = None) -> int:
    """Run ``command`` in ``image`` as the image's user, without network, root read-only."""
    tool = find_builder(builder)
    if tool == "buildah":
        ctr = subprocess.run(["buildah", "from", "--pull-never", image], check=True,
                             capture_output=True, text=True).stdout.strip()
        try:
            isolation = buildah_isolation()
            # chroot isolation shares the host's network; oci can take none.
            net = [] if isolation == "chroot" else ["--network", "none"]
            return subprocess.run(["buildah", "run", "--isolation", isolation, *net, ctr, "--",
                                   *command]).returncode
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
    return subprocess.run([tool, "run", "--rm", "--network", "none", "--read-only",
                           "--tmpfs", "/tmp", image, *command]).returncode


def pin_base() -> str:
    """Rewrite the Dockerfile's BASE_IMAGE digest with the registry's current one (skopeo)."""
    digest = subprocess.run(["skopeo", "inspect", "--format", "{{.Digest}}",
                             f"docker://{BASE_REPOSITORY}"], check=True, capture_output=True,
                            text=True).stdout.strip()
    text = DOCKERFILE.read_text()
    new = re.sub(r"^ARG BASE_IMAGE=\S+$", f"ARG BASE_IMAGE={BASE_REPOSITORY}@{digest}", text,
                 count=1, flags=re.M)
    DOCKERFILE.write_text(new)
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--variant", choices=("gpu", "cpu"), default="gpu")
    b.add_argument("--builder", choices=BUILDERS)
    b.add_argument("--tag")
    b.add_argument("--base-image", help="instead of the Dockerfile's pinned python base")
    d = sub.add_parser("debian-base")
    d.add_argument("--tag", default="localhost/govllm-base:bookworm")
    r = sub.add_parser("run")
    r.add_argument("image")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    r.add_argument("--builder", choices=BUILDERS)
    sub.add_parser("pin-base")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.variant, args.builder, args.tag, args.base_image)
        elif args.command == "debian-base":
            print(debian_base(args.tag))
        elif args.command == "run":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            return run(args.image, cmd, args.builder)
        else:
            print(pin_base())
    except NoBuilderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
