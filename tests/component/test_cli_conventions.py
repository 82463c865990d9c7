"""CLI conventions: environment variables for the shared options, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from cluster.spec.schema import DEFAULT_SPEC_PATH
from govllm.cli.main import app

GOVLLM = str(Path(sys.executable).parent / "govllm")
ENVVARS = {"spec": "GOVLLM_SPEC", "context": "GOVLLM_CONTEXT", "namespace": "GOVLLM_NAMESPACE"}


def _commands(command, path: str = ""):
    yield path, command
    if hasattr(command, "commands"):  # a group (typer may bundle its own click)
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}".strip())


def test_every_spec_context_and_namespace_option_reads_its_variable():
    checked = []
    for path, command in _commands(typer.main.get_command(app)):
        if path == "plan":  # --spec there selects a mode of the command, not the cluster
            continue
        for param in command.params:
            if param.name in ENVVARS and "--" + param.name in getattr(param, "opts", []):
                assert param.envvar == ENVVARS[param.name], f"govllm {path} --{param.name}"
                checked.append(f"{path} --{param.name}")
    assert {"serve --spec", "status --context", "status --namespace", "preflight --namespace",
            "audit verify --spec", "keys create --spec"} <= set(checked), checked


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ENVVARS.values()}
    return subprocess.run([GOVLLM, *args], capture_output=True, text=True, timeout=120, env={**base, **env})


def test_govllm_spec_selects_the_spec(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text(DEFAULT_SPEC_PATH.read_text().replace("models:", "modelz:", 1))
    refused = _run("validate", GOVLLM_SPEC=str(spec))
    assert refused.returncode == 1 and "modelz" in refused.stderr + refused.stdout
    assert _run("validate").returncode == 0  # unset: the embedded default


def test_shell_completion_is_available():
    shown = _run("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert shown.returncode == 0 and "_govllm_completion" in shown.stdout
