"""Pictures of the chart's Grafana dashboards, drawn from a real Prometheus's data.

    python tools/render_dashboards.py --prometheus http://127.0.0.1:9090 \\
        --start 2026-12-01T12:00:00 --end 2026-12-01T12:20:00 --out docs/img

Grafana cannot run here, so each dashboard (helm/govllm/dashboards/*.json) is laid out
on its own 24-column grid with matplotlib and every panel's queries are run as range
queries against the Prometheus given, exactly as Grafana would send them with every
template variable at "All" ($model, $tenant: `.*`) and `$__rate_interval` as given.
Time series are lines, stat panels their last value, bar gauges horizontal bars.
docs/observability.md shows the results and says how they were made.
"""

from __future__ import annotations

import argparse
import json
import math
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parent.parent / "helm" / "govllm" / "dashboards"


def expand(expr: str, rate_interval: str = "1m") -> str:
    """A panel query as Grafana sends it with every variable at All."""
    return (expr.replace("$__rate_interval", rate_interval)
            .replace("$model", ".*").replace("$tenant", ".*"))


def panels(dashboard: dict) -> list[dict]:
    """Every panel with queries (row panels carry none)."""
    return [p for p in dashboard["panels"] if p.get("targets")]


def legend(fmt: str, labels: dict) -> str:
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    data = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step}).encode()
    with urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/api/v1/query_range", data=data),
                                timeout=60) as resp:
        body = json.loads(resp.read())
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    return body["data"]["result"]


_UNITS = {"s": "s", "percentunit": "%", "reqps": "req/s", "ops": "/s", "bytes": "bytes", "h": "h"}


def _scale(unit: str, values: list[float]) -> list[float]:
    return [v * 100 for v in values] if unit == "percentunit" else values


def draw(dashboard: dict, url: str, start: float, end: float, out: Path, rate_interval: str = "1m") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig = plt.figure(figsize=(20, rows * 0.42), dpi=80)
    fig.suptitle(f"{dashboard['title']}   ({datetime.fromtimestamp(start):%Y-%m-%d %H:%M} - "
                 f"{datetime.fromtimestamp(end):%H:%M}, Prometheus data of a test run)", fontsize=13, x=0.01,
                 ha="left")
    grid = fig.add_gridspec(rows, 24, hspace=1.6, wspace=1.2, left=0.03, right=0.99, top=0.96, bottom=0.02)
    step = max(2.0, (end - start) / 240)
    for p in dashboard["panels"]:
        g = p["gridPos"]
        if p["type"] == "row":
            ax = fig.add_subplot(grid[g["y"], :])
            ax.axis("off")
            ax.text(0, 0.5, p["title"], fontsize=12, fontweight="bold", va="center")
            continue
        ax = fig.add_subplot(grid[g["y"]:g["y"] + g["h"] - 1, g["x"]:g["x"] + g["w"]])
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        ax.set_title(p["title"] + (f"  [{_UNITS[unit]}]" if unit in _UNITS else ""), fontsize=10, loc="left")
        series = []
        for t in p["targets"]:
            for r in query_range(url, expand(t["expr"], rate_interval), start, end, step):
                points = [(float(ts), float(v)) for ts, v in r["values"] if not math.isnan(float(v))]
                if points:
                    series.append((legend(t.get("legendFormat", ""), r["metric"]), points))
        if p["type"] == "timeseries":
            for name, points in series:
                ax.plot([datetime.fromtimestamp(ts) for ts, _ in points], _scale(unit, [v for _, v in points]),
                        label=name, linewidth=1.4)
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if series:
                ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            last = [(name, points[-1][1]) for name, points in series]
            if p["type"] == "bargauge":  # Grafana's horizontal gauge: name and value on each bar
                last.sort(key=lambda item: item[0], reverse=True)
                values = _scale(unit, [v for _, v in last])
                top = max([100.0, *values])
                ax.barh(range(len(values)), values, height=0.7,
                        color=["#d62728" if v >= 100 else "#ff7f0e" if v >= 80 else "#2ca02c" for v in values])
                for i, ((name, _), v) in enumerate(zip(last, values, strict=True)):
                    ax.text(top * 0.01, i, name, va="center", fontsize=9)
                    ax.text(top * 0.99, i, f"{v:.1f} %" if unit == "percentunit" else f"{v:.3g}", va="center",
                            ha="right", fontsize=9, fontweight="bold")
                ax.set_xlim(0, top)
            else:  # stat
                value = _scale(unit, [last[0][1]])[0] if last else None
                text = "no data" if value is None else (f"{value:.2f}" + (" %" if unit == "percentunit" else ""))
                ax.text(0.5, 0.45, text, fontsize=26, ha="center", va="center", transform=ax.transAxes)
        if not series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dashboard['uid']}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--start", required=True, help="ISO time, local zone")
    parser.add_argument("--end", required=True, help="ISO time, local zone")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--rate-interval", default="1m")
    args = parser.parse_args()
    for path in sorted(DASHBOARDS.glob("*.json")):
        print(draw(json.loads(path.read_text()), args.prometheus, _time(args.start), _time(args.end),
                   args.out, args.rate_interval))


if __name__ == "__main__":
    main()
