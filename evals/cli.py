"""rag-eval: ask an evaluation set's questions, score the answers, and write a report with plots."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import re
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from evals.report import write_report
from rag.errors import ModelUnavailable, RagError, UsageError
from rag.evaluation.dataset import DatasetError, EvalSet, QAItem, load_set, sample
from rag.evaluation.metrics import PRIMARY_METRIC
from rag.evaluation.runner import (
    DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, EvalResult, Evaluator, HttpPipeline, OursPipeline, Pipeline,
    QuestionRecord, best_point, close_shared, default_grid, open_gates, runtime_for_index, sweep_thresholds,
)
from rag.indexing.index import IndexBusy, IndexIncompatible
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.runtime import Runtime

EXIT_OK = 0  # every set evaluated (and at or above the floor, when one was given)
EXIT_BELOW_FLOOR = 1  # ours' grounded accuracy is below --min-grounded-accuracy on some set
EXIT_USAGE = 2  # bad arguments, a malformed set (the message names the file and line), invalid settings
EXIT_INDEX = 3  # a set's index is busy (another ingest) or was built with other models/chunking
EXIT_MODEL = 4  # a model is missing or failed verification

PIPELINES = {"ours": ("ours",), "baseline": ("baseline",), "both": ("ours", "baseline")}
# Threshold grids of --sweep (the configured values are added to them).
RELEVANCE_GRID = (0.0, 0.8, 0.05)  # low, high, step: cosine of the best passage
SUPPORT_GRID = (0.0, 1.0, 0.05)

EPILOG = """\
examples:
  rag-eval --set ../shared/eval/squad2-dev --limit 40 --seed 0
      a 40-question stratified sample (20 answerable, 20 not), ours and the LangChain baseline
  rag-eval --set ../shared/eval/squad2-dev --set ../shared/eval/clapnq-dev --pipeline ours
      every question of two sets, ours only
  rag-eval --set ../shared/eval/squad2-dev --pipeline ours --sweep
      also run ours once with the gates open and re-score it over a grid of (min_relevance, min_support):
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

exit codes: 0 ok; 1 ours below --min-grounded-accuracy on some set; 2 usage error (bad arguments, a
            malformed qa.jsonl line: the message names the line); 3 index busy or incompatible;
            4 model unavailable
"""


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
        "--sweep", action="store_true",
        help="abstention trade-off: one more run of ours (in process) with the gates open, re-scored offline "
        "over a grid of (min_relevance, min_support)",
    )
    parser.add_argument(
        "--open-gates", action="store_true",
        help="run ours with every gate open (relevance, confidence): every question is generated and its "
        "confidence features recorded, the input of `python -m evals.calibrate`",
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
    from rag.runtime import quiet_libraries

    quiet_libraries()
    try:
        settings = Settings()
        _check_args(args, settings)
        sets = _load_sets(args.sets)  # a malformed set fails here, before any model loads
        out = args.out = args.out or Path(".rag-eval") / "reports" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        print(f"rag-eval: writing the report to {out} (updated after each pipeline)", file=sys.stderr)
        command = "rag-eval " + shlex.join(argv)
        report = asyncio.run(evaluate(settings, sets, args, command, checkpoint=lambda r: write_report(out, r)))
    except (UsageError, DatasetError, ValidationError) as exc:
        return _error(exc, EXIT_USAGE)
    except (IndexBusy, IndexIncompatible) as exc:
        return _error(exc, EXIT_INDEX)
    except ModelUnavailable as exc:
        return _error(exc, EXIT_MODEL)
    except RagError as exc:
        return _error(exc, EXIT_USAGE)

    write_report(out, report)
    print(summary(report), file=sys.stdout)
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return _floor_check(report, args.min_grounded_accuracy)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "x"


def _error(exc: Exception, code: int) -> int:
    print(f"rag-eval: error: {exc}", file=sys.stderr)
    return code


def _check_args(args: argparse.Namespace, settings: Settings) -> None:
    pipelines = PIPELINES[args.pipeline]
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    # The per-question limit governs the run: the generator's own request limit must not fail a question first
    # (on a slow CPU, a question can wait behind several batches).
    settings.generation.request_timeout_s = max(settings.generation.request_timeout_s, args.timeout)
    if args.min_grounded_accuracy is not None:
        if not 0.0 <= args.min_grounded_accuracy <= 1.0:
            raise UsageError(f"--min-grounded-accuracy must be in [0, 1], got {args.min_grounded_accuracy}")
        if "ours" not in pipelines:
            raise UsageError("--min-grounded-accuracy checks ours: use --pipeline ours or both")
    if args.sweep and args.url:
        raise UsageError("--sweep runs ours in process with the gates open: drop --url")
    if args.api_key and not args.url:
        raise UsageError("--api-key goes with --url")
    if args.url and not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, got {args.url!r}")
    if args.url and not args.api_key:
        args.api_key = settings.api.api_key
    if args.max_new_tokens is not None:
        limit = settings.generation.max_new_tokens_limit
        if not 1 <= args.max_new_tokens <= limit:
            raise UsageError(f"--max-new-tokens must be in [1, {limit}] (generation.max_new_tokens_limit)")
        settings.generation.max_new_tokens = args.max_new_tokens


def _load_sets(roots: list[Path]) -> list[EvalSet]:
    sets = [load_set(root) for root in roots]
    names = [s.name for s in sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"two --set folders share the name {duplicates[0]!r}; each set gets an index by its name")
    return sets


# --------------------------------------------------------------------------------------------- running


async def evaluate(
    settings: Settings, sets: list[EvalSet], args: argparse.Namespace, command: str,
    checkpoint: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every set with the chosen pipelines; returns the report dict (see ``evals.report``).

    ``checkpoint`` gets the report so far after each pipeline finishes, so a run stopped midway keeps what
    it measured.
    """
    from rag.runtime import Runtime

    pipelines = PIPELINES[args.pipeline]
    ours_in_process = "ours" in pipelines and not args.url
    needs_index = ours_in_process or args.sweep
    needs_runtime = needs_index or "baseline" in pipelines
    report: dict[str, Any] = {
        "primary_metric": PRIMARY_METRIC,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(settings),
        "settings": settings.model_dump(mode="json"),
        "run": {
            "pipelines": list(pipelines), "limit": args.limit, "seed": args.seed, "concurrency": args.concurrency,
            "timeout_s": args.timeout, "url": args.url, "index_root": str(args.index_root), "sweep": args.sweep,
        },
        "sets": [],
    }
    base: Runtime | None = None
    try:
        for eval_set in sets:
            set_settings = settings.model_copy(deep=True)
            set_settings.index.path = args.index_root / eval_set.name / "index"
            runtime = None
            if needs_runtime:
                if base is None:
                    base = Runtime(set_settings).start()
                    runtime = base
                else:
                    runtime = runtime_for_index(base, set_settings)
            try:
                items = sample(eval_set.items, args.limit, args.seed)
                entry = _set_entry(eval_set, items, args, runtime)
                report["sets"].append(entry)
                await _evaluate_set(entry, eval_set, items, runtime, pipelines, needs_index, args,
                                    lambda: checkpoint(report) if checkpoint else None)
            finally:
                if runtime is not None and runtime is not base:
                    close_shared(runtime)
    finally:
        if base is not None:
            base.close()
    return report


def _set_entry(
    eval_set: EvalSet, items: list[QAItem], args: argparse.Namespace, runtime: "Runtime | None"
) -> dict[str, Any]:
    """A set's report entry for the sampled ``items``, before any pipeline ran."""
    n_answerable = sum(item.answerable for item in items)
    return {
        "name": eval_set.name,
        "root": str(eval_set.root),
        "questions_in_set": len(eval_set.items),
        "sample": {
            "n": len(items), "answerable": n_answerable, "unanswerable": len(items) - n_answerable,
            "limit": args.limit, "seed": args.seed,
        },
        "index": None if runtime is None else str(runtime.settings.index.path),
        "ingest": None,
        "results": {},
        "sweep": None,
    }


async def _evaluate_set(
    entry: dict[str, Any], eval_set: EvalSet, items: list[QAItem], runtime: "Runtime | None",
    pipelines: tuple[str, ...], needs_index: bool, args: argparse.Namespace, checkpoint: Callable[[], Any],
) -> None:
    """Fill ``entry`` (from ``_set_entry``) with each pipeline's result on ``items``, checkpointing after each."""
    if needs_index and runtime is not None:
        entry["ingest"] = await asyncio.to_thread(_ingest, runtime, eval_set)
    for name in pipelines:
        pipeline = await _make_pipeline(name, eval_set, runtime, args)
        try:
            result = await _run(eval_set, items, pipeline, args)
        finally:
            if isinstance(pipeline, HttpPipeline):
                await pipeline.aclose()
        entry["results"][name] = result_dict(result)
        checkpoint()
    if args.sweep and runtime is not None:
        entry["sweep"] = await _sweep(eval_set, items, runtime, args)
        checkpoint()


async def _make_pipeline(
    name: str, eval_set: EvalSet, runtime: "Runtime | None", args: argparse.Namespace
) -> Pipeline:
    if name == "ours":
        if args.url:
            return HttpPipeline(args.url, args.api_key, timeout_s=args.timeout)
        return OursPipeline(runtime, open_gates(runtime) if args.open_gates else None)
    from rag.evaluation.baseline import BaselinePipeline

    cache = args.index_root / eval_set.name / "baseline-faiss"
    return await asyncio.to_thread(BaselinePipeline.for_set, runtime, eval_set.docs_dir, cache)


def _ingest(runtime: "Runtime", eval_set: EvalSet) -> dict[str, Any]:
    """Bring the set's index up to date with its docs/ (a no-op when nothing changed)."""
    with runtime.index.writing():
        report = runtime.ingestor.sync_folder(runtime.index, eval_set.docs_dir)
    if report.failed:
        failed = "; ".join(f"{f.path}: {f.reason}" for f in report.failed)
        print(f"rag-eval: warning: {eval_set.name}: files skipped by the ingest: {failed}", file=sys.stderr)
    data = asdict(report)
    data["failed"] = [asdict(f) for f in report.failed]
    return data


async def _run(eval_set: EvalSet, items: list[QAItem], pipeline: Pipeline, args: argparse.Namespace) -> EvalResult:
    """One pipeline over the sampled items, with a progress bar showing the running grounded accuracy."""
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=f"{eval_set.name} {pipeline.name}", unit="q", file=sys.stderr,
               disable=args.quiet, dynamic_ncols=True)
    done = {"n": 0, "right": 0, "failed": 0}
    # Each record is appended here as it finishes, so a run stopped midway keeps every answered question.
    partial = Path(args.out) / "partial" / f"{_slug(eval_set.name)}.{_slug(pipeline.name)}.jsonl"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")

    def on_record(record: QuestionRecord) -> None:
        with partial.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record.to_dict()) + "\n")
        done["n"] += 1
        done["right"] += bool(record.score.get("right"))
        done["failed"] += record.failed
        bar.set_postfix(grounded_acc=f"{done['right'] / done['n']:.3f}", failed=done["failed"], refresh=False)
        bar.update(1)

    evaluator = Evaluator(eval_set, items, concurrency=args.concurrency, timeout_s=args.timeout, on_record=on_record)
    try:
        return await evaluator.evaluate(pipeline)
    finally:
        bar.close()


async def _sweep(
    eval_set: EvalSet, items: list[QAItem], runtime: "Runtime", args: argparse.Namespace
) -> dict[str, Any]:
    """Run ours once with the gates open and re-score it over the threshold grid."""
    configured = {
        "min_relevance": runtime.settings.retrieval.min_relevance,
        "min_support": runtime.settings.generation.min_support,
    }
    pipeline = OursPipeline(runtime, open_gates(runtime), name="ours (gates open)")
    result = await _run(eval_set, items, pipeline, args)
    relevance_grid = default_grid(configured["min_relevance"], *RELEVANCE_GRID)
    support_grid = default_grid(configured["min_support"], *SUPPORT_GRID)
    points = sweep_thresholds(items, result.records, relevance_grid, support_grid)
    best = best_point(points)
    at_configured = sweep_thresholds(items, result.records, [configured["min_relevance"]], [configured["min_support"]])
    ties = [p for p in points if p.metrics[PRIMARY_METRIC] == best.metrics[PRIMARY_METRIC]]
    span = {key: [min(getattr(p, key) for p in ties), max(getattr(p, key) for p in ties)]
            for key in ("min_relevance", "min_support")}
    print(
        f"{eval_set.name}: grounded accuracy is highest, {best.metrics[PRIMARY_METRIC]:.3f} "
        f"(hallucination rate {best.metrics['hallucination_rate']:.3f}), at min_relevance {best.min_relevance:.2f} "
        f"and min_support {best.min_support:.2f}; configured ({configured['min_relevance']:.2f}, "
        f"{configured['min_support']:.2f}) gives {at_configured[0].metrics[PRIMARY_METRIC]:.3f} "
        f"({len(ties)} grid points tie, spanning min_relevance {span['min_relevance'][0]:.2f}-"
        f"{span['min_relevance'][1]:.2f} and min_support {span['min_support'][0]:.2f}-{span['min_support'][1]:.2f})",
        file=sys.stderr,
    )
    return {
        "configured": configured,
        "grid": {"min_relevance": relevance_grid, "min_support": support_grid},
        "points": [asdict(p) for p in points],
        "best": asdict(best),
        "best_ties": len(ties),
        "best_span": span,
        "at_configured": at_configured[0].metrics,
        "open_run": result_dict(result),
    }


def result_dict(result: EvalResult) -> dict[str, Any]:
    return {
        "n": result.metrics["n"],
        "metrics": result.metrics,
        "wall_s": round(result.wall_s, 2),
        "records": [r.to_dict() for r in result.records],
    }


def machine_info(settings: Settings) -> dict[str, Any]:
    """The machine the numbers were measured on."""
    import torch

    from rag.models import select_device

    try:
        device = select_device(settings.models)
    except ModelUnavailable as exc:
        device = f"unavailable ({exc})"
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# ------------------------------------------------------------------------------------------- summaries


def summary(report: dict[str, Any]) -> str:
    """The per-set metric tables, as printed at the end of a run."""
    from evals.report import format_metric, metric_order

    blocks = []
    for entry in report["sets"]:
        results = entry["results"]
        names = list(results)
        metric_dicts = [results[n]["metrics"] for n in names]
        rows = [["metric", *names]]
        rows += [[m, *(format_metric(m, d.get(m)) for d in metric_dicts)] for m in metric_order(metric_dicts)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [f"{entry['name']} ({entry['sample']['n']} questions)"]
        lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                  for row in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _floor_check(report: dict[str, Any], floor: float | None) -> int:
    if floor is None:
        return EXIT_OK
    below = [
        (entry["name"], entry["results"]["ours"]["metrics"][PRIMARY_METRIC])
        for entry in report["sets"]
        if "ours" in entry["results"] and entry["results"]["ours"]["metrics"][PRIMARY_METRIC] < floor
    ]
    for name, value in below:
        print(f"rag-eval: {name}: ours' grounded accuracy {value:.3f} is below the floor {floor:.3f}", file=sys.stderr)
    return EXIT_BELOW_FLOOR if below else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
