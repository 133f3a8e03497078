"""Fit the confidence model from gates-open dev runs, validate it across sets, and write it with its figures.

    rag-eval --set ../shared/eval/squad2-dev --limit 150 --seed 0 --pipeline ours --open-gates --out eval-out/open-squad2
    rag-eval --set ../shared/eval/clapnq-dev --limit 150 --seed 0 --pipeline ours --open-gates --out eval-out/open-clapnq
    rag-eval --set ../shared/eval/sec10q-dev --pipeline ours --open-gates --out eval-out/open-sec10q
    python -m evals.calibrate eval-out/open-squad2 eval-out/open-clapnq eval-out/open-sec10q \\
        --out rag/answering/calibrator.json --report docs/calibration.md --plot docs/img/reliability.png

Each argument is a rag-eval report folder (its report.json, or partial/*.ours.jsonl while a run is unfinished).
The shipped model is fitted on every set given. The figures printed and written never come from the rows that
chose them: leave-one-set-out (fit and threshold on the other sets, scored on the one left out: a kind of set
never seen) and 5-fold over questions (fit and threshold on the other folds of every set, scored on the fold:
new questions of the kinds of sets fitted on).

exit codes: 0 ok; 2 usage error (no records, an unreadable report, fewer than two sets)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rag.answering.prompting import present
from rag.answering.verification import restates_question, unquoted_figures
from rag.evaluation.dataset import QAItem, load_set
from rag.evaluation.metrics import Prediction, score_question
from rag.types import Answer, Citation, Quote
from rag.evaluation.calibration import (
    HeldOut, Labeled, calibrator_from_fit, cross_set, held_out_questions, outcome, reliability,
)

EXIT_USAGE = 2


def read_records(folder: Path, pipeline: str = "ours") -> list[dict[str, Any]]:
    """The ``pipeline``'s records of a rag-eval report folder, each with the set's name under "set"."""
    report = folder / "report.json"
    rows: list[dict[str, Any]] = []
    if report.exists():
        data = json.loads(report.read_text(encoding="utf-8"))
        for entry in data.get("sets", []):
            for record in (entry.get("results", {}).get(pipeline) or {}).get("records", []):
                rows.append({**record, "set": entry["name"]})
    if not rows:
        for partial in sorted((folder / "partial").glob(f"*.{pipeline}.jsonl")):
            set_name = partial.name.split(".")[0]
            for line in partial.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rows.append({**json.loads(line), "set": set_name})
    return rows


def latest_records(folders: list[Path]) -> list[dict[str, Any]]:
    """The records of ``folders``, a question recorded in several counting once, as the last folder has it: a
    change that alters some questions' prompts is measured by generating those again into a new folder named
    after the old ones, and the rest keep their records (greedy decoding gives them unchanged)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for folder in folders:
        for record in read_records(folder):
            latest[(record["set"], record["id"])] = record
    return list(latest.values())


def labeled(record: dict[str, Any], item: QAItem | None = None) -> Labeled | None:
    """A fitting row from a gates-open record; None for a failed question or one without features.

    With the set's ``item``, the answer is scored again with the current metrics, as the current service would
    present it (``rag.answering.prompting.present``, which leaves an already presented answer unchanged): a run
    recorded by older code then still fits the model the service uses now.
    """
    if record.get("error") or not record.get("features"):
        return None
    answered = not record["abstained"]
    form = record.get("form") or "short"
    if answered and form == "short" and restates_question(record["answer"], record["question"]):
        # The service now declines such a span (``restates_question``); a run recorded before that gave it.
        # A keyword-style question's record holds the presented quote, not the span: not caught here.
        answered = False
    quotes = tuple(Quote(**q) for q in record.get("quotes", ()))
    if answered and form == "short" and quotes and unquoted_figures(
        record["answer"], [q.text for q in quotes], record["question"]
    ):
        answered = False  # the service now declines a span whose figure its quotes lack (``unquoted_figures``)
    grounded = answered and bool(record["score"].get("grounded"))
    if answered and item is not None:
        text = present(record["question"], form, record["answer"], quotes)
        citations = tuple(Citation(**c) for c in record["citations"])
        answer = Answer(text=text, abstained=False, citations=citations)
        grounded = score_question(item, Prediction(item.id, answer, (), 0.0)).grounded
    return Labeled(
        set_name=record["set"], id=record["id"], features=record["features"], answered=answered,
        grounded=grounded, answerable=bool(record["answerable"]),
    )


def set_items(root: Path, names: set[str]) -> dict[str, QAItem]:
    """Items of the named sets under ``root`` by id (sets not found there are skipped: records keep their scores)."""
    items: dict[str, QAItem] = {}
    for name in names:
        if (root / name / "qa.jsonl").exists():
            items.update({item.id: item for item in load_set(root / name).items})
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("reports", type=Path, nargs="+", help="rag-eval report folders of gates-open runs")
    parser.add_argument("--out", type=Path, help="write the calibrator (JSON) here")
    parser.add_argument("--report", type=Path, help="write the cross-set figures (Markdown) here")
    parser.add_argument("--plot", type=Path, help="write the reliability diagram (PNG) here")
    parser.add_argument(
        "--target-hallucination", type=float,
        help="choose the threshold of highest grounded accuracy among those whose hallucination rate stays at or "
        "below this (default: highest grounded accuracy, no target)",
    )
    parser.add_argument(
        "--sets-root", type=Path, default=Path("../shared/eval"),
        help="folder holding the sets by name, to score the answers again (default: ../shared/eval)",
    )
    parser.add_argument("--features", help="comma-separated feature names (default: every recorded feature)")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    args = parser.parse_args(argv)

    records = latest_records(args.reports)
    items = set_items(args.sets_root, {r["set"] for r in records})
    rows = [row for r in records if (row := labeled(r, items.get(r["id"]))) is not None]
    if not rows:
        print("calibrate: error: no gates-open records with features in " + ", ".join(map(str, args.reports)),
              file=sys.stderr)
        return EXIT_USAGE
    sets = sorted({r.set_name for r in rows})
    names = args.features.split(",") if args.features else sorted(rows[0].features)
    if len(sets) < 2:
        print(f"calibrate: error: cross-set validation needs two or more sets, got {sets}", file=sys.stderr)
        return EXIT_USAGE

    held = cross_set(rows, names, args.target_hallucination, args.c)
    folded = held_out_questions(rows, names, args.target_hallucination, args.c)
    command = "python -m evals.calibrate " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = render(rows, held, names, args.target_hallucination, command, folded)
    print("\n".join(lines))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.plot:
        plot_reliability(rows, held, args.plot)
    if args.out:
        provenance = {
            "command": command, "sets": {s: sum(r.set_name == s for r in rows) for s in sets},
            "target_hallucination": args.target_hallucination, "c": args.c,
            "cross_set": {h.set_name: {"threshold": h.threshold, "grounded_accuracy": h.outcome.grounded_accuracy,
                                       "interval": list(h.interval), "hallucination_rate": h.outcome.hallucination_rate}
                          for h in held},
            "held_out_questions": {h.set_name: {"grounded_accuracy": h.outcome.grounded_accuracy,
                                                "interval": list(h.interval),
                                                "hallucination_rate": h.outcome.hallucination_rate} for h in folded},
        }
        model = calibrator_from_fit(rows, names, args.target_hallucination, args.c, provenance)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(model.to_json(), indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}: threshold {model.threshold:.2f}, {len(names)} features")
    return 0


def render(
    rows: list[Labeled], held: list[HeldOut], names: list[str], target: float | None, command: str,
    folded: list[HeldOut] | None = None,
) -> list[str]:
    """The Markdown figures: per held-out set, the model against answering everything and the best threshold
    on that set; then the 5-fold figures over questions."""
    lines = [
        f"Cross-set validation (`{command}`): each set scored by a model fitted, and thresholded for the highest "
        f"grounded accuracy{'' if target is None else f' with a hallucination rate <= {target:.2f}'}, on the "
        "other sets. 95% bootstrap intervals over questions.",
        "",
        "| held-out set | n | threshold | grounded accuracy [95% CI] | hallucination rate | correct rate (answerable) "
        "| answered | answer everything | best threshold on this set (oracle) |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for h in held:
        test = [r for r in rows if r.set_name == h.set_name]
        everything = outcome(test, [1.0] * len(test), 0.0)
        oracle = max(outcome(test, list(h.confidence), t / 100).grounded_accuracy for t in range(100))
        o = h.outcome
        lines.append(
            f"| {h.set_name} | {o.n} | {h.threshold:.2f} | **{o.grounded_accuracy:.3f}** "
            f"[{h.interval[0]:.3f}, {h.interval[1]:.3f}] | {o.hallucination_rate:.3f} | {o.correct_rate:.3f} | "
            f"{o.answered} | {everything.grounded_accuracy:.3f} | {oracle:.3f} |"
        )
    if folded:
        lines += [
            "", "Held-out questions (5 folds per set; fitted and thresholded on the other folds of every set):", "",
            "| set | n | grounded accuracy [95% CI] | hallucination rate | correct rate (answerable) | answered |",
            "| --- | ---: | --- | ---: | ---: | ---: |",
        ]
        for h in folded:
            o = h.outcome
            lines.append(
                f"| {h.set_name} | {o.n} | **{o.grounded_accuracy:.3f}** [{h.interval[0]:.3f}, {h.interval[1]:.3f}] "
                f"| {o.hallucination_rate:.3f} | {o.correct_rate:.3f} | {o.answered} |"
            )
    lines += ["", "Reliability (cross-set confidences pooled): mean confidence, observed share grounded, answers.", "",
              "| bin | mean confidence | grounded | n |", "| --- | ---: | ---: | ---: |"]
    confidence, right = _pooled(rows, held)
    for i, (conf, acc, n) in enumerate(reliability(confidence, right)):
        lines.append(f"| {i} | {conf:.2f} | {acc:.2f} | {n} |")
    lines += ["", f"Features ({len(names)}): " + ", ".join(f"`{n}`" for n in names)]
    return lines


def _pooled(rows: list[Labeled], held: list[HeldOut]) -> tuple[list[float], list[bool]]:
    """Cross-set confidences and outcomes of the answered rows, all held-out sets together."""
    confidence: list[float] = []
    right: list[bool] = []
    for h in held:
        test = [r for r in rows if r.set_name == h.set_name]
        for row, conf in zip(test, h.confidence, strict=True):
            if row.answered:
                confidence.append(conf)
                right.append(row.grounded)
    return confidence, right


def plot_reliability(rows: list[Labeled], held: list[HeldOut], path: Path) -> Path:
    """Reliability diagram of the cross-set confidences: observed share grounded against mean confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for h in held:
        test = [r for r in rows if r.set_name == h.set_name]
        pairs = [(c, r.grounded) for r, c in zip(test, h.confidence, strict=True) if r.answered]
        table = reliability([c for c, _ in pairs], [g for _, g in pairs], bins=5)
        ax.plot([t[0] for t in table], [t[1] for t in table], marker="o", label=f"{h.set_name} (held out)")
    ax.set_xlabel("confidence (cross-set)")
    ax.set_ylabel("share of answers grounded")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability of the confidence model")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
