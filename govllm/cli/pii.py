"""`govllm pii scan`: the guard's findings for a document, so operators can try a policy on their own text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

pii_app = typer.Typer(help="The Japanese personal-information guard (docs/pii.md).", no_args_is_help=True)


@pii_app.command("scan")
def scan(
    file: Path | None = typer.Argument(None, help="Text file to scan (UTF-8). Default: stdin.",
                                       exists=True, dir_okay=False),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: findings and counts."),
    names: bool = typer.Option(False, "--names", help="Also detect personal names (SudachiPy)."),
    min_score: float = typer.Option(0.5, "--min-score", min=0.0, max=1.0,
                                    help="Report findings scoring at least this (0 shows everything)."),
    show: bool = typer.Option(False, "--show", help="Print each finding's text too (your terminal only: "
                              "the guard itself never prints values)."),
    engine: str = typer.Option("govllm", "--engine", help="govllm (what the router runs) or presidio "
                               "(the same recognisers inside Presidio's AnalyzerEngine)."),
) -> None:
    """Print the personal information found in a text: type, start, end, score, recogniser.

    Positions are character offsets in the original text (before normalisation).
    Exit code 0 when nothing was found, 3 when something was, 1 on bad input.
    """
    try:
        text = file.read_text(encoding="utf-8") if file is not None else sys.stdin.read()
    except UnicodeDecodeError:
        typer.echo("the input is not UTF-8 text", err=True)
        raise typer.Exit(1) from None
    if engine == "presidio":
        from serving.pii.presidio_support import analyze

        findings = analyze(text, names=names, min_score=min_score)
    elif engine == "govllm":
        from serving.pii.detector import Detector

        findings = Detector(names=names, min_score=min_score).findings(text)
    else:
        typer.echo("--engine must be govllm or presidio", err=True)
        raise typer.Exit(1)
    rows = [f.as_dict() | ({"text": text[f.start:f.end]} if show else {}) for f in findings]
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.entity] = counts.get(f.entity, 0) + 1
    if as_json:
        typer.echo(json.dumps({"findings": rows, "counts": counts, "characters": len(text)},
                              ensure_ascii=False, indent=2))
    else:
        if not rows:
            typer.echo("no personal information found")
        for row in rows:
            shown = f"  {row['text']}" if show else ""
            typer.echo(f"{row['type']:<20} {row['start']:>7} {row['end']:>7}  {row['score']:.2f}  "
                       f"{row['recognizer']}{shown}")
    raise typer.Exit(3 if findings else 0)


def register(app: typer.Typer) -> None:
    app.add_typer(pii_app, name="pii")
