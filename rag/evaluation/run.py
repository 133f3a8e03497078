"""A whole evaluation run, as ``rag-eval`` makes it: every set ingested into its own index, each pipeline asked
its sampled questions, the optional threshold sweep, all gathered in one ``EvalReport``.

    report = await evaluate_sets(settings, [load_set(root)], RunOptions(pipelines=("ours",), limit=40))
    report.summary(); write_report(out, report)

The models load once (for the first set) and every later set's runtime shares them (``Runtime.derive``).
Hooks let a front end follow the run: ``progress(label, total)`` returns a callable fed each finished
question's record (and closed at the end of the pipeline), ``checkpoint(report)`` is called after each
pipeline so a run stopped midway keeps what it measured, ``notify(message)`` gets warnings and the sweep's
verdict.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rag.evaluation.dataset import EvalSet, QAItem, sample
from rag.evaluation.evaluator import Evaluator
from rag.evaluation.pipelines import HttpPipeline, OursPipeline, open_gates
from rag.evaluation.records import EvalResult, Pipeline, QuestionRecord
from rag.evaluation.report import EvalReport, RunOptions, SetReport
from rag.evaluation.sweep import Sweep
from rag.files import slug
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.runtime import Runtime


class Progress(Protocol):
    """Follows one pipeline over one set: called with each finished record, then closed."""

    def __call__(self, record: QuestionRecord) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, int], Progress]  # (label, number of questions) -> Progress


async def evaluate_sets(
    settings: Settings, sets: Sequence[EvalSet], options: RunOptions, *, command: str = "",
    progress: ProgressFactory | None = None, checkpoint: Callable[[EvalReport], Any] | None = None,
    notify: Callable[[str], Any] | None = None,
) -> EvalReport:
    """Evaluate every set with ``options.pipelines``; returns the report (see the module docstring)."""
    from rag.machine import machine_info
    from rag.runtime import Runtime

    report = EvalReport(
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), command=command,
        machine=machine_info(settings.models), settings=settings.model_dump(mode="json"), run=options,
    )
    run = _Run(options, progress, lambda: checkpoint(report) if checkpoint else None, notify or (lambda _: None))
    base: Runtime | None = None
    try:
        for eval_set in sets:
            index_path = options.index_root / eval_set.name / "index"
            runtime = None
            if options.needs_runtime:
                overrides = {"index": {"path": index_path}}
                if base is None:
                    runtime = base = Runtime(settings.with_overrides(overrides)).start()
                else:
                    runtime = base.derive(overrides)  # the next set: its own index, the same models
            try:
                items = sample(eval_set.items, options.limit, options.seed)
                entry = SetReport.of(eval_set, items, options, index=None if runtime is None else index_path)
                report.sets.append(entry)
                await run.evaluate_set(entry, eval_set, runtime)
            finally:
                if runtime is not None and runtime is not base:
                    runtime.close()
    finally:
        if base is not None:
            base.close()
    return report


class _Run:
    def __init__(
        self, options: RunOptions, progress: ProgressFactory | None, checkpoint: Callable[[], Any],
        notify: Callable[[str], Any],
    ):
        self.options = options
        self.progress = progress
        self.checkpoint = checkpoint
        self.notify = notify

    async def evaluate_set(self, entry: SetReport, eval_set: EvalSet, runtime: "Runtime | None") -> None:
        """Fill ``entry`` with each pipeline's result on its items, checkpointing after each."""
        options = self.options
        if options.needs_index and runtime is not None:
            # Bring the set's index up to date with its docs/ (a no-op when nothing changed).
            entry.ingest = await asyncio.to_thread(runtime.documents.sync_folder, eval_set.docs_dir)
            if entry.ingest.failed:
                failed = "; ".join(f"{f.path}: {f.reason}" for f in entry.ingest.failed)
                self.notify(f"warning: {eval_set.name}: files skipped by the ingest: {failed}")
        for name in options.pipelines:
            # --open-gates: ours with every gate open, its confidence features recorded (evals.calibrate).
            opened = open_gates(runtime) if name == "ours" and options.open_gates and runtime is not None else None
            pipeline = OursPipeline(opened) if opened is not None else await self._pipeline(name, eval_set, runtime)
            try:
                entry.results[name] = await self.run(eval_set, entry.items, pipeline)
            finally:
                if isinstance(pipeline, HttpPipeline):
                    await pipeline.aclose()
                if opened is not None:
                    opened.close()
            self.checkpoint()
        if options.sweep and runtime is not None:
            gates_open = open_gates(runtime)
            try:
                result = await self.run(eval_set, entry.items, OursPipeline(gates_open, name="ours (gates open)"))
            finally:
                gates_open.close()
            configured = (runtime.settings.retrieval.min_relevance, runtime.answers.min_confidence)
            entry.sweep = Sweep.of(entry.items, result, configured)
            self.notify(f"{eval_set.name}: {entry.sweep.describe()}")
            self.checkpoint()

    async def run(self, eval_set: EvalSet, items: Sequence[QAItem], pipeline: Pipeline) -> EvalResult:
        """One pipeline over ``items``; each record goes to the progress hook and to ``partial_dir`` as it ends."""
        partial = None
        if self.options.partial_dir is not None:
            # Each record is appended as it finishes, so a run stopped midway keeps every answered question.
            partial = self.options.partial_dir / f"{slug(eval_set.name)}.{slug(pipeline.name)}.jsonl"
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text("")
        follow = self.progress(f"{eval_set.name} {pipeline.name}", len(items)) if self.progress else None

        def on_record(record: QuestionRecord) -> None:
            if partial is not None:
                with partial.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record.to_dict()) + "\n")
            if follow is not None:
                follow(record)

        evaluator = Evaluator(
            eval_set, items, concurrency=self.options.concurrency, timeout_s=self.options.timeout_s,
            on_record=on_record,
        )
        try:
            return await evaluator.evaluate(pipeline)
        finally:
            if follow is not None:
                follow.close()

    async def _pipeline(self, name: str, eval_set: EvalSet, runtime: "Runtime | None") -> Pipeline:
        options = self.options
        if name == "ours":
            if options.url:
                return HttpPipeline(options.url, options.api_key, timeout_s=options.timeout_s)
            return OursPipeline(runtime)
        from rag.evaluation.baseline import BaselinePipeline

        cache = options.index_root / eval_set.name / "baseline-faiss"
        return await asyncio.to_thread(BaselinePipeline.for_set, runtime, eval_set.docs_dir, cache)
