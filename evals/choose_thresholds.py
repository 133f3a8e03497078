"""Choose the abstention thresholds from a `rag-eval --sweep` report: the grid point with the best grounded
accuracy averaged over the swept sets (so a set with no unanswerable questions pulls the gates down as much as
a set with many pulls them up).

    python -m evals.choose_thresholds eval-out/dev-50/report.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from rag.evaluation.metrics import PRIMARY_METRIC


def mean_by_point(report: dict) -> dict[tuple[float, float], dict[str, float]]:
    """(min_relevance, min_confidence) -> {set name: grounded accuracy} over the sets that were swept."""
    table: dict[tuple[float, float], dict[str, float]] = defaultdict(dict)
    for entry in report["sets"]:
        for point in (entry.get("sweep") or {}).get("points", []):
            key = (round(point["min_relevance"], 4), round(point["min_confidence"], 4))
            table[key][entry["name"]] = point["metrics"][PRIMARY_METRIC]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.choose_thresholds", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 table printed; 2 bad arguments or a report without a sweep.",
    )
    parser.add_argument("report", type=Path, help="report.json of a rag-eval --sweep run")
    parser.add_argument("--top", type=int, default=8, help="grid points to print")
    args = parser.parse_args(argv)
    try:
        table = mean_by_point(json.loads(args.report.read_text()))
    except (OSError, ValueError) as exc:
        print(f"choose_thresholds: error: cannot read {args.report}: {exc}", file=sys.stderr)
        return 2
    if not table:
        print("no sweep in this report: run rag-eval with --sweep", file=sys.stderr)
        return 2
    sets = sorted({name for scores in table.values() for name in scores})
    ranked = sorted(
        ((sum(s.values()) / len(s), key, s) for key, s in table.items() if len(s) == len(sets)),
        key=lambda row: (-row[0], -row[1][0], -row[1][1]),
    )
    print(f"{'mean':>6}  {'min_relevance':>13}  {'min_confidence':>11}  " + "  ".join(f"{n:>12}" for n in sets))
    for mean, (relevance, support), scores in ranked[: args.top]:
        print(f"{mean:6.3f}  {relevance:13.2f}  {support:11.2f}  " + "  ".join(f"{scores[n]:12.3f}" for n in sets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
