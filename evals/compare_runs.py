"""Two generators (or any two configurations) on the same questions, paired: which is better, with intervals.

Each side is a list of gates-open rag-eval folders covering the same questions (e.g. every dev set run once with
each model). Both sides are calibrated as ``evals.calibrate`` does (same features, 5 folds over questions, fitted
and thresholded on the other folds) and each question's held-out outcome (right: a grounded answer, or an
abstention on an unanswerable question) is compared question by question. The paired bootstrap of the difference
is far tighter than two separate intervals: both sides answer the same questions, so the questions' own
difficulty cancels out.

    python -m evals.compare_runs --a eval-out/05b-squad2 eval-out/05b-clapnq eval-out/05b-sec10q \\
        --b eval-out/15b-squad2 eval-out/15b-clapnq eval-out/15b-sec10q --features relevance,long_form

With ``--baseline FOLDER...`` instead of ``--b``, side B is the LangChain baseline's records of those folders
(``rag-eval --pipeline baseline``): a pipeline without a gate, each answer's outcome taken as recorded.

exit codes: 0 ok; 2 usage error (no records, sides that share no question)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from evals.calibrate import labeled, latest_records, read_records, set_items
from rag.evaluation.calibration import Labeled, held_out_questions

EXIT_USAGE = 2


def held_out_right(rows: list[Labeled], names: list[str]) -> dict[tuple[str, str], tuple[bool, bool]]:
    """(set, id) -> (held-out decision right, answer everything right) for every row."""
    right: dict[tuple[str, str], tuple[bool, bool]] = {}
    for result in held_out_questions(rows, names):
        test = [r for r in rows if r.set_name == result.set_name]
        for row, confidence in zip(test, result.confidence, strict=True):
            gives = row.answered and confidence >= 0.5
            decided = row.grounded if gives else not row.answerable
            everything = row.grounded if row.answered else not row.answerable
            right[(row.set_name, row.id)] = (bool(decided), bool(everything))
    return right


def calibrated_right(
    folders: list[Path], sets_root: Path, names: list[str],
) -> dict[tuple[str, str], tuple[bool, bool]] | None:
    """``held_out_right`` of the gates-open records of ``folders``, scored again against the sets under
    ``sets_root``; None when they cover fewer than two sets (held-out fitting needs the others)."""
    records = latest_records(folders)
    items = set_items(sets_root, {r["set"] for r in records})
    rows = [row for r in records if (row := labeled(r, items.get(r["id"]))) is not None]
    if len({r.set_name for r in rows}) < 2:
        return None
    return held_out_right(rows, names)


def recorded_right(folders: list[Path]) -> dict[tuple[str, str], tuple[bool, bool]]:
    """(set, id) -> (right as recorded, the same) for the baseline records of ``folders``: it has no gate, so
    what it gives is what it answers."""
    right: dict[tuple[str, str], tuple[bool, bool]] = {}
    for folder in folders:
        for r in read_records(folder, "baseline"):
            if r.get("error"):
                continue
            outcome = bool(r["score"].get("grounded")) if not r["abstained"] else not r["answerable"]
            right[(r["set"], r["id"])] = (outcome, outcome)
    return right


def paired(a: list[bool], b: list[bool], seed: int = 0, rounds: int = 2000) -> tuple[float, float, float]:
    """mean(b) - mean(a) and its 95% paired bootstrap interval."""
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(rounds, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.compare_runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, nargs="+", required=True, help="gates-open report folders of side A")
    side_b = parser.add_mutually_exclusive_group(required=True)
    side_b.add_argument("--b", type=Path, nargs="+", help="gates-open report folders of side B")
    side_b.add_argument("--baseline", type=Path, nargs="+", help="report folders whose baseline records are side B")
    parser.add_argument("--features", default="relevance,long_form", help="confidence features (default relevance,long_form)")
    parser.add_argument("--sets-root", type=Path, default=Path("../shared/eval"), help="the sets, to score again")
    args = parser.parse_args(argv)
    names = args.features.split(",")
    a = calibrated_right(args.a, args.sets_root, names)
    b = recorded_right(args.baseline) if args.baseline else calibrated_right(args.b, args.sets_root, names)
    if a is None or b is None:
        print("compare_runs: error: each side needs gates-open records of two or more sets", file=sys.stderr)
        return EXIT_USAGE
    sides = [a, b]
    common = sorted(set(sides[0]) & set(sides[1]))
    if not common:
        print("compare_runs: error: the two sides share no question", file=sys.stderr)
        return EXIT_USAGE
    print(f"B - A, paired over the questions both sides answered; features {args.features}; 95% bootstrap intervals\n")
    print("| set | n | A held-out | B held-out | B - A [95% CI] | A answer everything | B answer everything | B - A [95% CI] |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |")
    for set_name in sorted({s for s, _ in common}) + ["all"]:
        keys = [k for k in common if set_name in ("all", k[0])]
        cells = []
        for column in (0, 1):
            a = [sides[0][k][column] for k in keys]
            b = [sides[1][k][column] for k in keys]
            diff, low, high = paired(a, b)
            cells.append(f"{np.mean(a):.3f} | {np.mean(b):.3f} | {diff:+.3f} [{low:+.3f}, {high:+.3f}]")
        print(f"| {set_name} | {len(keys)} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
