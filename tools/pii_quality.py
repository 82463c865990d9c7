"""Precision and recall of the personal-information guard per type, on the labelled test set.

    .venv/bin/python tools/pii_quality.py [--names] [--engine govllm|presidio] [--markdown]

A finding counts as correct when its type and its span equal a label's exactly.
"near-miss precision" counts, for the Individual and Corporate Number, how many
of the near misses (identifier-like numbers that are not personal information)
were wrongly reported. Labels come from tools/pii_testset.py, not from the
recognisers. Without --names, PERSON is not detected and is left out.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from serving.config.pii_entities import ENTITY_TYPES

TESTSET = Path(__file__).resolve().parents[1] / "tests" / "data" / "pii" / "testset.jsonl"


def evaluate(names: bool = False, engine: str = "govllm", path: Path = TESTSET) -> dict:
    if engine == "presidio":
        from serving.pii.presidio_support import analyze

        def find(text):
            return analyze(text, names=names)
    else:
        from serving.pii.detector import Detector

        detector = Detector(names=names)
        find = detector.findings
    tp, fp, fn = Counter(), Counter(), Counter()
    near_fp, near_total = Counter(), 0
    documents = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        documents += 1
        labels = {(x["type"], x["start"], x["end"]) for x in row["labels"]
                  if names or x["type"] != "PERSON"}
        found = {(f.entity, f.start, f.end) for f in find(row["text"])}
        for item in found & labels:
            tp[item[0]] += 1
        for item in found - labels:
            fp[item[0]] += 1
        for item in labels - found:
            fn[item[0]] += 1
        near_total += len(row["near_misses"])
        for miss in row["near_misses"]:
            for entity, start, end in found:
                if start < miss["end"] and end > miss["start"]:
                    near_fp[entity] += 1
    per_type = {}
    for entity in ENTITY_TYPES:
        if entity == "PERSON" and not names:
            continue
        t, p, n = tp[entity], fp[entity], fn[entity]
        per_type[entity] = {
            "labelled": t + n, "found": t + p, "correct": t,
            "precision": round(t / (t + p), 4) if t + p else None,
            "recall": round(t / (t + n), 4) if t + n else None,
            "near_miss_false_positives": near_fp[entity],
        }
    return {"documents": documents, "near_misses": near_total, "names": names, "engine": engine,
            "per_type": per_type}


def markdown(result: dict) -> str:
    lines = ["| type | labelled | found | correct | precision | recall | near misses reported |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for entity, r in result["per_type"].items():
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        lines.append(f"| {entity} | {r['labelled']} | {r['found']} | {r['correct']} | {pct(r['precision'])} "
                     f"| {pct(r['recall'])} | {r['near_miss_false_positives']} of {result['near_misses']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--names", action="store_true", help="Detect personal names (SudachiPy).")
    parser.add_argument("--engine", choices=["govllm", "presidio"], default="govllm")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    result = evaluate(args.names, args.engine)
    print(markdown(result) if args.markdown else json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
