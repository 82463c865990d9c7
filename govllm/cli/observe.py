"""`govllm top` and `govllm metrics targets`: the running platform's metrics from a terminal."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import typer

from govllm.cli.common import OutputOption, SpecOption, load, write_output

metrics_app = typer.Typer(help="The local run's metrics endpoints, for a Prometheus (docs/observability.md).",
                          no_args_is_help=True)
PROMETHEUS_ENV = "GOVLLM_PROMETHEUS_URL"


def _seconds(window: str) -> float:
    match = re.fullmatch(r"(\d+)([smh])", window)
    if not match:
        raise typer.BadParameter("a duration such as 30s, 1m or 5m", param_hint="--window")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def _report(spec: Path | None) -> dict:
    from govllm.status import collect

    cluster_spec, _ = load(spec)
    try:
        return collect(cluster_spec)
    except RuntimeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@metrics_app.command("targets")
def targets(
    spec: Path | None = SpecOption,
    output: Path | None = OutputOption,
    watch: float = typer.Option(0.0, "--watch", min=0.0,
                                help="Rewrite --output every this many seconds (replicas restart on "
                                "new ports); 0: once."),
) -> None:
    """Write the local run's scrape targets as Prometheus file_sd JSON.

    Ray's metrics port of every node (router and Ray Serve metrics) and each model replica's
    data-plane /metrics (vLLM's). Point a file_sd_configs entry of prometheus.yml at the file.
    """
    from govllm.observe.targets import scrape_targets

    if watch and output is None:
        raise typer.BadParameter("--watch rewrites a file: give --output", param_hint="--watch")
    while True:
        text = json.dumps(scrape_targets(_report(spec)), indent=2) + "\n"
        if output is not None:  # replaced whole, so Prometheus never reads half a file
            tmp = output.with_name(output.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(output)
        else:
            write_output(text, None)
        if not watch:
            return
        time.sleep(watch)


def top(
    spec: Path | None = SpecOption,
    prometheus: str | None = typer.Option(
        None, "--prometheus", envvar=PROMETHEUS_ENV,
        help="Read from this Prometheus (its HTTP API, e.g. http://127.0.0.1:9090). Without it the "
        "local run's metrics endpoints are scraped directly."),
    window: str = typer.Option("1m", "--window", help="Rates and quantiles over this window (30s, 1m, 5m)."),
    interval: float = typer.Option(
        10.0, "--interval", min=0.5,
        help="Seconds between frames. Scraping directly, --once waits this long between its two "
        "scrapes: Ray exports metrics every 10 s, so less shows little."),
    once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
    as_json: bool = typer.Option(False, "--json", help="With --once: the frame as JSON."),
) -> None:
    """Live per-model and per-tenant view: requests/s, tokens/s, TTFT p50/p99, errors, budgets.

    Read from a Prometheus (--prometheus; on Kubernetes, port-forward to yours) or, for the
    local run, straight from its Ray metrics ports and model replicas. Ctrl-C to leave.
    """
    from govllm.observe.sources import PrometheusSource, ScrapeSource
    from govllm.observe.top import collect, render

    seconds = _seconds(window)
    if prometheus:
        source, name = PrometheusSource(prometheus, window), prometheus
    else:
        from govllm.observe.targets import metrics_urls, scrape_targets

        urls = metrics_urls(scrape_targets(_report(spec)))
        source, name = ScrapeSource(urls, window_s=seconds), f"{len(urls)} metrics endpoints"
        source.refresh()
        # rates need two scrapes: say why nothing shows yet
        typer.echo(f"govllm top: scraped {len(urls)} metrics endpoints; the next scrape in {interval:g} s",
                   err=True)
        time.sleep(interval)
    if once:
        frame = collect(source, name)
        if as_json:
            typer.echo(json.dumps(frame.to_json(), indent=2, ensure_ascii=False))
        else:
            from rich.console import Console

            Console(width=160).print(render(frame))
        return
    from rich.live import Live

    with Live(render(collect(source, name)), auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(collect(source, name)), refresh=True)
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    app.command("top")(top)
    app.add_typer(metrics_app, name="metrics")
