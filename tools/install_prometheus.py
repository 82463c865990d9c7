"""Put Debian's `prometheus` and `promtool` into the virtual environment (`make prometheus-tools`).

The chart's alert rules are checked with `promtool` and every dashboard query runs against a
real Prometheus scraping the test stack (tests/unit/test_prometheus_rules.py,
tests/integration/test_prometheus.py). Both binaries come from the Debian package
`prometheus` (static Go programs):

* already on PATH (the package is installed): linked into the venv;
* otherwise, as root with apt-get: `apt-get download prometheus` and the two binaries
  extracted from the .deb with dpkg-deb, so no system service is installed or started;
* otherwise: exit 1 saying what to install.

    python tools/install_prometheus.py --dest .venv/bin
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BINARIES = ("prometheus", "promtool")
PACKAGE = "prometheus"


def works(path: Path) -> bool:
    try:
        return subprocess.run([str(path), "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def from_deb(dest: Path) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # apt's sandbox user writes the download here
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "download", "-qq", PACKAGE], check=True, cwd=tmp, env=env)
        (deb,) = Path(tmp).glob(f"{PACKAGE}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], check=True)
        for name in BINARIES:
            shutil.copy2(Path(tmp) / "root" / "usr" / "bin" / name, dest / name)
        print(f"installed {', '.join(BINARIES)} from {deb.name} into {dest}")


def install(dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    if all(works(dest / name) for name in BINARIES):
        return 0
    found = {name: shutil.which(name) for name in BINARIES}
    if all(found.values()):
        for name, path in found.items():
            (dest / name).unlink(missing_ok=True)
            (dest / name).symlink_to(path)
        return 0
    if os.geteuid() == 0 and shutil.which("apt-get") and shutil.which("dpkg-deb"):
        from_deb(dest)
        return 0 if all(works(dest / name) for name in BINARIES) else 1
    print("prometheus-tools: `prometheus` and `promtool` are not on PATH and cannot be installed here "
          "(needs root and apt-get). Install the Debian/Ubuntu package `prometheus` (or put both "
          "binaries on PATH) and run `make prometheus-tools` again.", file=sys.stderr)
    return 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, required=True)
    sys.exit(install(parser.parse_args().dest))


if __name__ == "__main__":
    main()
