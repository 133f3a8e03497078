"""rag-eval: ask an evaluation set's questions, score the answers, and write a report with plots."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import shlex
import sys
from pathlib import Path

from pydantic import ValidationError

from rag.errors import EXIT_CODES, ExitCode, RagError, UsageError, error_message, exit_code
from rag.evaluation.dataset import EvalSet, load_set
from rag.evaluation.evaluator import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S
from rag.evaluation.records import QuestionRecord
from rag.evaluation.report import EvalReport, RunOptions
from rag.settings import Settings

PIPELINES = {"ours": ("ours",), "baseline": ("baseline",), "both": ("ours", "baseline")}

EPILOG = f"""\
examples:
  rag-eval --set ../shared/eval/squad2-dev --limit 40 --seed 0
      a 40-question stratified sample (20 answerable, 20 not), ours and the LangChain baseline
  rag-eval --set ../shared/eval/squad2-dev --set ../shared/eval/clapnq-dev --pipeline ours
      every question of two sets, ours only
  rag-eval --set ../shared/eval/squad2-dev --pipeline ours --sweep
      also run ours once with the gates open and re-score it over a grid of (min_relevance, min_confidence):
      writes sweep-<set>.json/.png and prints the thresholds that maximise grounded accuracy
  rag-eval --set ../shared/eval/squad2-dev --pipeline ours --url http://127.0.0.1:8000 --api-key KEY
      evaluate a running rag-serve (ingest the set's docs/ into its index first)
  rag-eval --set ../shared/eval/squad2-dev --limit 40 --seed 0 --pipeline ours --min-grounded-accuracy 0.55
      the CI check (python -m evals.ci_sample): exit 1 below the floor

Each set is ingested into its own index, <index-root>/<set name>/index (an unchanged set is not re-embedded);
the baseline's FAISS store is cached in <index-root>/<set name>/baseline-faiss. The report (report.json with
settings, machine and every question's record, report.md, PNG plots) goes to --out, rewritten after each
pipeline; partial/*.jsonl there gets each question's record as it finishes. Settings come from RAG_*
environment variables (see README): RAG_GENERATION__MAX_NEW_TOKENS=64 etc.

{EXIT_CODES}"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag-eval", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--set", dest="sets", type=Path, action="append", required=True, metavar="DIR",
        help="evaluation set folder (docs/*.pdf + qa.jsonl); repeat for several sets",
    )
    parser.add_argument(
        "--pipeline", choices=sorted(PIPELINES), default="both", help="what to evaluate (default: both)"
    )
    parser.add_argument("--limit", type=int, help="questions per set, stratified by answerable (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--url", help="evaluate ours through a running service at this URL instead of in process")
    parser.add_argument("--api-key", help="bearer key for --url (default: settings api.api_key)")
    parser.add_argument("--out", type=Path, help="report folder (default: .rag-eval/reports/<date-time>)")
    parser.add_argument(
        "--open-gates", action="store_true",
        help="run ours with every gate open (relevance floor, confidence): every question is generated and its "
        "confidence features recorded, the input of `python -m evals.calibrate`",
    )
    parser.add_argument(
        "--sweep", action="store_true",
        help="abstention trade-off: one more run of ours (in process) with the gates open, re-scored offline "
        "over a grid of (min_relevance, min_confidence)",
    )
    parser.add_argument(
        "--index-root", type=Path, default=Path(".rag-eval"), help="where per-set indexes live (default: .rag-eval)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
        help=f"questions in flight at once; the batcher merges them (default: {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S,
        help="seconds per question before it is recorded as failed; raises generation.request_timeout_s to "
        f"match for this run (default: {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--max-new-tokens", type=int, help="cap on generated tokens (default: settings)")
    parser.add_argument(
        "--min-grounded-accuracy", type=float, metavar="F", help="exit 1 when ours scores below F on any set"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rag.evaluation.render import write_report
    from rag.evaluation.run import evaluate_sets
    from rag.runtime import quiet_libraries

    quiet_libraries()
    out = args.out or Path(".rag-eval") / "reports" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        settings = run_settings(Settings(), args)
        options = run_options(args, settings, out)
        sets = _load_sets(args.sets)  # a malformed set fails here, before any model loads
        print(f"rag-eval: writing the report to {out} (updated after each pipeline)", file=sys.stderr)
        report = asyncio.run(evaluate_sets(
            settings, sets, options, command="rag-eval " + shlex.join(argv),
            progress=None if args.quiet else _ProgressBar, checkpoint=lambda r: write_report(out, r),
            notify=lambda message: print(f"rag-eval: {message}", file=sys.stderr),
        ))
    except (RagError, ValidationError) as exc:  # DatasetError is a RagError: exit 2
        print(f"rag-eval: error: {error_message(exc)}", file=sys.stderr)
        return exit_code(exc)
    write_report(out, report)
    print(report.summary(), file=sys.stdout)
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return floor_check(report, args.min_grounded_accuracy)


def run_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings of this run: the per-question limit governs it, so the generator's own request limit is
    raised to match (on a slow CPU a question can wait behind several batches); --max-new-tokens caps
    generation. Validated again (ValidationError)."""
    generation: dict = {"request_timeout_s": max(settings.generation.request_timeout_s, args.timeout)}
    if args.max_new_tokens is not None:
        generation["max_new_tokens"] = args.max_new_tokens
    return settings.with_overrides({"generation": generation})


def run_options(args: argparse.Namespace, settings: Settings, out: Path) -> RunOptions:
    """The typed run options of the arguments (UsageError naming a bad one)."""
    pipelines = PIPELINES[args.pipeline]
    if args.min_grounded_accuracy is not None:
        if not 0.0 <= args.min_grounded_accuracy <= 1.0:
            raise UsageError(f"--min-grounded-accuracy must be in [0, 1], got {args.min_grounded_accuracy}")
        if "ours" not in pipelines:
            raise UsageError("--min-grounded-accuracy checks ours: use --pipeline ours or both")
    if args.api_key and not args.url:
        raise UsageError("--api-key goes with --url")
    return RunOptions(
        pipelines=pipelines, limit=args.limit, seed=args.seed, concurrency=args.concurrency, timeout_s=args.timeout,
        url=args.url, api_key=(args.api_key or settings.api.api_key) if args.url else None,
        index_root=args.index_root, sweep=args.sweep, open_gates=args.open_gates, partial_dir=out / "partial",
    )


def _load_sets(roots: list[Path]) -> list[EvalSet]:
    sets = [load_set(root) for root in roots]
    names = [s.name for s in sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"two --set folders share the name {duplicates[0]!r}; each set gets an index by its name")
    return sets


class _ProgressBar:
    """A tqdm bar per pipeline and set, showing the running grounded accuracy."""

    def __init__(self, label: str, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, unit="q", file=sys.stderr, dynamic_ncols=True)
        self.n = self.right = self.failed = 0

    def __call__(self, record: QuestionRecord) -> None:
        self.n += 1
        self.right += bool(record.score.get("right"))
        self.failed += record.failed
        self.bar.set_postfix(grounded_acc=f"{self.right / self.n:.3f}", failed=self.failed, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def floor_check(report: EvalReport, floor: float | None) -> int:
    """ExitCode.PARTIAL (1) when ours scores below ``floor`` on some set, else OK."""
    if floor is None:
        return ExitCode.OK
    below = report.below_floor(floor)
    for name, value in below:
        print(f"rag-eval: {name}: ours' grounded accuracy {value:.3f} is below the floor {floor:.3f}", file=sys.stderr)
    return ExitCode.PARTIAL if below else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
