"""The `govllm` command line: the typer app assembled from one module per command group.

Each module of `CMD_MODULES` has `register(app)` and imports only govllm.cli.common of this
package (as vLLM's entrypoints/cli/main.py assembles its CMD_MODULES), so adding a command
group is one module and one line here.
"""

from __future__ import annotations

import typer

from cluster.spec.schema import DEFAULT_SPEC_PATH
from govllm.cli import cluster, observe, pii, plan, render, serve, status, tenancy

CMD_MODULES = (serve, render, plan, status, tenancy, cluster, pii, observe)

app = typer.Typer(
    help=(
        "govllm: serve Japan's domestic LLMs to government staff on Ray Serve LLM + vLLM.\n\n"
        "Everything is driven by one YAML cluster spec; without --spec the embedded local "
        f"default is used ({DEFAULT_SPEC_PATH.name}: two generated tiny models on vLLM-CPU)."
    ),
    no_args_is_help=True,
    # `govllm --install-completion` / `--show-completion` (bash, zsh, fish, PowerShell)
    add_completion=True,
    pretty_exceptions_enable=False,
)

for _module in CMD_MODULES:
    _module.register(app)


def main() -> None:
    app()
