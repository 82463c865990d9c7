"""CycloneDX SBOMs for a release (`make sbom`, docs/release.md), written by cyclonedx-py.

    python tools/sbom.py --output-dir build/sbom [--no-validate]

Three documents, all CycloneDX 1.6 JSON, with govllm (pyproject.toml) as the described
component:

* ``govllm-<version>-environment.cdx.json``: what is installed in this Python environment
  (``cyclonedx-py environment``): the development/CI set, as it really is on disk;
* ``govllm-<version>-gpu.cdx.json`` and ``-cpu.cdx.json``: the image's contents, from the
  hashed locks (``cyclonedx-py requirements``), pins and hashes exactly as the image installs.

Validation against the CycloneDX schema is on by default; ``--no-validate`` skips it (the
schema check takes a minute or more on these machines, so the tests read the documents
themselves instead).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import image  # noqa: E402  (project_version)
import lock  # noqa: E402  (lock paths)

SPEC_VERSION = "1.6"


def cyclonedx(*args: str, validate: bool) -> list[str]:
    cmd = [str(Path(sys.executable).with_name("cyclonedx-py")), *args,
           "--pyproject", str(lock.ROOT / "pyproject.toml"), "--of", "JSON",
           "--sv", SPEC_VERSION]
    return cmd + ([] if validate else ["--no-validate"])


def write_sboms(out_dir: Path, validate: bool = True, sets: tuple[str, ...] = ("gpu", "cpu"),
                environment: bool = True) -> list[Path]:
    """Write the SBOMs; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"govllm-{image.project_version()}"
    written: list[Path] = []
    if environment:
        path = out_dir / f"{stem}-environment.cdx.json"
        subprocess.run(cyclonedx("environment", "-o", str(path), validate=validate)
                       + [sys.executable], check=True)
        written.append(path)
    for name in sets:
        path = out_dir / f"{stem}-{name}.cdx.json"
        subprocess.run(cyclonedx("requirements", "-o", str(path), validate=validate)
                       + [str(lock.LOCKS / f"{name}.txt")], check=True)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=lock.ROOT / "build" / "sbom")
    parser.add_argument("--no-validate", action="store_true")
    args = parser.parse_args(argv)
    for path in write_sboms(args.output_dir, validate=not args.no_validate):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
