"""Plots and a Markdown summary from a load test's raw log and locust CSVs.

    python -m loadtest.report loadtest/results/smoke            # the --csv prefix of the run
    python -m loadtest.report loadtest/results/smoke --slo-file loadtest/slo/production-example.yaml

Reads `<prefix>_requests.jsonl` (one record per request, exact timings), and when present
`<prefix>_stats_history.csv` (locust's user count over time) and `<prefix>_summary.json`
(the run's shape and SLO verdict). Writes next to them:

* `<prefix>_latency.png`: TTFT, TPOT and E2E p50/p90/p99 per time bucket
* `<prefix>_throughput.png`: requests/s by outcome, output tokens/s, and users
* `<prefix>_models.png`: TTFT and TPOT p50/p90/p99 per model
* `<prefix>_report.md`: overall, per-scenario and per-model tables, the SLO gates, the plots

Percentiles are computed from the raw records (numpy's linear interpolation), not from
locust's bucketed histograms. With --slo-file the gates are evaluated again from the records
and the command exits 3 when one fails, so a stored run can be re-gated.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtest.llmload.metrics import (
    PERCENTILES,
    RequestRecord,
    percentile,
    read_records,
    summarise,
    values_of,
)
from loadtest.llmload.slo import SLOError, evaluate, load_slo

LATENCIES = ("ttft_ms", "tpot_ms", "e2e_ms")


def time_buckets(records: Sequence[RequestRecord], bucket_s: float) -> list[tuple[float, list[RequestRecord]]]:
    """Records grouped by send time into `bucket_s` buckets: (bucket start offset, records)."""
    if not records:
        return []
    start = min(r.t for r in records)
    groups: dict[int, list[RequestRecord]] = {}
    for r in records:
        groups.setdefault(int((r.t - start) // bucket_s), []).append(r)
    last = max(groups)
    return [(i * bucket_s, groups.get(i, [])) for i in range(last + 1)]


def completions_per_bucket(records: Sequence[RequestRecord], bucket_s: float) -> dict[str, list[float]]:
    """Requests/s by outcome and output tokens/s, bucketed by completion time."""
    if not records:
        return {}
    start = min(r.t for r in records)
    ends = [(r, r.t + (r.e2e_ms or 0) / 1000.0 - start) for r in records]
    n = int(max(e for _, e in ends) // bucket_s) + 1
    out = {"ok": [0.0] * n, "error": [0.0] * n, "quota": [0.0] * n, "tokens": [0.0] * n}
    for r, end in ends:
        i = int(end // bucket_s)
        out[r.outcome][i] += 1 / bucket_s
        if r.outcome == "ok":
            out["tokens"][i] += (r.output_tokens or 0) / bucket_s
    return out


def users_over_time(history_csv: Path, t0: float | None) -> list[tuple[float, int]]:
    """(seconds since t0, user count) from locust's stats history (Aggregated rows)."""
    if not history_csv.exists():
        return []
    points = []
    with history_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") != "Aggregated":
                continue
            try:
                ts, users = float(row["Timestamp"]), int(float(row["User Count"]))
            except (KeyError, ValueError):
                continue
            points.append((ts, users))
    if not points:
        return []
    base = t0 if t0 is not None else points[0][0]
    return [(ts - base, u) for ts, u in points]


def _auto_bucket(records: Sequence[RequestRecord]) -> float:
    if not records:
        return 1.0
    span = max(r.t for r in records) - min(r.t for r in records)
    return max(1.0, round(span / 30.0))


def plot_latency(records: Sequence[RequestRecord], bucket_s: float, path: Path) -> None:
    import matplotlib.pyplot as plt

    buckets = time_buckets(records, bucket_s)
    fig, axes = plt.subplots(len(LATENCIES), 1, figsize=(10, 9), sharex=True)
    for ax, metric in zip(axes, LATENCIES, strict=True):
        for q in PERCENTILES:
            xs, ys = [], []
            for start, group in buckets:
                v = percentile(values_of(group, metric), q)
                if v is not None:
                    xs.append(start + bucket_s / 2)
                    ys.append(v)
            ax.plot(xs, ys, marker="o", markersize=3, label=f"p{q}")
        ax.set_ylabel(f"{metric.removesuffix('_ms').upper()} (ms)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel(f"seconds since start (requests bucketed by send time, {bucket_s:g} s)")
    fig.suptitle("Latency percentiles over time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_throughput(records: Sequence[RequestRecord], bucket_s: float, users: list[tuple[float, int]],
                    path: Path) -> None:
    import matplotlib.pyplot as plt

    series = completions_per_bucket(records, bucket_s)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    xs = [(i + 0.5) * bucket_s for i in range(len(series.get("ok", [])))]
    for outcome, colour in (("ok", "tab:green"), ("error", "tab:red"), ("quota", "tab:orange")):
        if any(series.get(outcome, [])):
            ax1.plot(xs, series[outcome], marker="o", markersize=3, color=colour, label=f"{outcome} req/s")
    ax1.set_ylabel("requests/s (by completion)")
    ax1.grid(alpha=0.3)
    if users:
        twin = ax1.twinx()
        twin.step([u[0] for u in users], [u[1] for u in users], where="post", color="tab:gray",
                  alpha=0.6, label="users")
        twin.set_ylabel("users")
        twin.legend(loc="upper right", fontsize=8)
    ax1.legend(loc="upper left", fontsize=8)
    ax2.plot(xs, series.get("tokens", []), marker="o", markersize=3, color="tab:blue")
    ax2.set_ylabel("output tokens/s")
    ax2.set_xlabel(f"seconds since start ({bucket_s:g} s buckets)")
    ax2.grid(alpha=0.3)
    fig.suptitle("Throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_models(summary: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    models = [m for m, g in summary["models"].items() if g["ttft_ms"].get("count")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / len(PERCENTILES)
    for ax, metric in zip(axes, ("ttft_ms", "tpot_ms"), strict=True):
        for j, q in enumerate(PERCENTILES):
            vals = [summary["models"][m][metric].get(f"p{q}") or 0.0 for m in models]
            ax.bar([i + j * width for i in range(len(models))], vals, width, label=f"p{q}")
        ax.set_xticks([i + width * (len(PERCENTILES) - 1) / 2 for i in range(len(models))])
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric.removesuffix('_ms').upper()} (ms)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Per model (model that answered)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(title: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"### {title}", "",
             "| | ok | errors | 429 | TTFT p50 / p90 / p99 ms | TPOT p50 / p90 / p99 ms | "
             "E2E p50 / p90 / p99 ms | ITL p90 ms | out tok/s | goodput |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def trio(g: dict[str, Any], metric: str) -> str:
        return " / ".join(_fmt(g[metric].get(f"p{q}")) for q in PERCENTILES)

    for name, g in groups.items():
        good = "-" if g.get("goodput") is None else f"{100 * g['goodput']:.1f}%"
        lines.append(f"| {name} | {g['ok']} | {g['error']} | {g['quota']} | {trio(g, 'ttft_ms')} | "
                     f"{trio(g, 'tpot_ms')} | {trio(g, 'e2e_ms')} | {_fmt(g['itl_ms'].get('p90'), 1)} | "
                     f"{_fmt(g.get('output_tokens_per_s'), 1)} | {good} |")
    return lines + [""]


def markdown(prefix: Path, summary: dict[str, Any], run: dict[str, Any] | None,
             gates: list[dict[str, Any]] | None, plots: list[Path]) -> str:
    o = summary["overall"]
    error_pct = None if o["error_rate"] is None else 100 * o["error_rate"]
    goodput = "- (no per-request SLOs)" if o["goodput"] is None else f"{100 * o['goodput']:.1f}%"
    lines = [f"# Load test report: {prefix.name}", ""]
    if run:
        started = run.get("started_at")
        when = datetime.fromtimestamp(started).isoformat(timespec="seconds") if started else "?"
        lines += [f"* target: {run.get('host')}, started {when}",
                  f"* user classes: {', '.join(run.get('user_classes') or [])}",
                  f"* shape: `{json.dumps(run.get('shape'), ensure_ascii=False)}`"]
    lines += [
        f"* requests: {o['requests']} ({o['ok']} ok, {o['error']} errors, {o['quota']} quota 429s) "
        f"over {_fmt(o.get('duration_s'), 1)} s",
        f"* throughput: {_fmt(o.get('throughput_rps'), 2)} req/s, "
        f"{_fmt(o.get('output_tokens_per_s'), 1)} output tokens/s",
        f"* error rate: {_fmt(error_pct, 2)}%; goodput: {goodput}",
        "",
    ]
    if gates is not None:
        verdict = "PASSED" if all(g["passed"] for g in gates) else "FAILED"
        lines += [f"## SLO gates: {verdict}", "", "| gate | measured | result |", "|---|---:|---|"]
        for g in gates:
            lines.append(f"| {g['gate']} | {_fmt(g['value'], 3) if g['value'] is not None else 'no data'} | "
                         f"{'pass' if g['passed'] else '**FAIL**'} |")
        lines.append("")
    lines += ["## Exact percentiles (from the raw log)", ""]
    lines += _table("Per scenario", summary["scenarios"])
    lines += _table("Per model", summary["models"])
    lines += _table("Per scenario and model", summary["scenario_models"])
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def build_report(prefix: Path, *, raw: Path | None = None, bucket_s: float | None = None,
                 slo_file: str | None = None) -> tuple[Path, list[dict[str, Any]] | None]:
    """Write the plots and the Markdown summary; returns the Markdown path and the gates."""
    raw = raw or Path(f"{prefix}_requests.jsonl")
    records = read_records(raw)
    if not records:
        raise FileNotFoundError(f"{raw}: no request records (did the run send any requests?)")
    summary = summarise(records)
    run, gates = None, None
    summary_json = Path(f"{prefix}_summary.json")
    if summary_json.exists():
        stored = json.loads(summary_json.read_text())
        run = stored.get("run")
        gates = (stored.get("slo") or {}).get("gates")
    if slo_file:
        gates = [r.as_dict() for r in evaluate(records, load_slo(slo_file))]
    bucket = bucket_s or _auto_bucket(records)
    t0 = min(r.t for r in records)
    plots = [Path(f"{prefix}_latency.png"), Path(f"{prefix}_throughput.png"), Path(f"{prefix}_models.png")]
    import matplotlib

    matplotlib.use("Agg")
    plot_latency(records, bucket, plots[0])
    plot_throughput(records, bucket, users_over_time(Path(f"{prefix}_stats_history.csv"), t0), plots[1])
    plot_models(summary, plots[2])
    md = Path(f"{prefix}_report.md")
    md.write_text(markdown(prefix, summary, run, gates, plots), encoding="utf-8")
    return md, gates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", type=Path, help="the run's --csv prefix, e.g. loadtest/results/smoke")
    parser.add_argument("--raw", type=Path, help="raw log (default: <prefix>_requests.jsonl)")
    parser.add_argument("--bucket", type=float, help="seconds per time bucket (default: about 30 buckets)")
    parser.add_argument("--slo-file", help="evaluate these gates again; exit 3 when one fails")
    args = parser.parse_args(argv)
    try:
        md, gates = build_report(args.prefix, raw=args.raw, bucket_s=args.bucket, slo_file=args.slo_file)
    except (FileNotFoundError, SLOError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"wrote {md} and its plots")
    if args.slo_file and gates is not None and not all(g["passed"] for g in gates):
        print("SLO gates failed", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
