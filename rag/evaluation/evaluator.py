"""Running an evaluation: questions and a pipeline in, per-question records and the metrics dict out.

    evaluator = Evaluator(eval_set, sample(eval_set.items, limit=40, seed=0))
    result = await evaluator.evaluate(OursPipeline(runtime))
    result.metrics[PRIMARY_METRIC]  # grounded accuracy, as defined in shared/eval/README.md

A pipeline (``rag.evaluation.records.Pipeline``) is the service in this process (``OursPipeline``), the
service over HTTP (``HttpPipeline``) or the LangChain baseline (``rag.evaluation.baseline.BaselinePipeline``).
Each question runs under a time limit; an exception or a timeout is recorded as a failed question (scored as
wrong, never as an answer or an abstention) and the run goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence

from rag.evaluation.dataset import EvalSet, QAItem
from rag.evaluation.metrics import PRIMARY_METRIC, Prediction, aggregate_scores, score_question
from rag.evaluation.records import EvalResult, Pipeline, QuestionRecord, Retrieved, make_record
from rag.types import Answer

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_CONCURRENCY = 4  # concurrent questions; the batcher merges them into one generate call


class Evaluator:
    """Asks every question of ``items`` (default: the whole set) through a pipeline and scores the answers.

    Up to ``concurrency`` questions are in flight at once (the batcher merges them into one generate call);
    each gets ``timeout_s`` seconds. ``on_record`` is called with each finished question's record, in
    completion order (a progress bar's hook); the result keeps the set's order.
    """

    primary_metric = PRIMARY_METRIC

    def __init__(
        self,
        eval_set: EvalSet,
        items: Sequence[QAItem] | None = None,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_record: Callable[[QuestionRecord], None] | None = None,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.eval_set = eval_set
        self.items = tuple(eval_set.items if items is None else items)
        if not self.items:
            raise ValueError(f"no questions to evaluate in set {eval_set.name!r}")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.on_record = on_record

    async def evaluate(self, pipeline: Pipeline) -> EvalResult:
        """Run every question through ``pipeline``; failures are recorded, never raised."""
        semaphore = asyncio.Semaphore(self.concurrency)
        started = time.perf_counter()

        async def one(item: QAItem) -> QuestionRecord:
            async with semaphore:
                record = await self._ask(pipeline, item)
            if self.on_record is not None:
                self.on_record(record)
            return record

        records = await asyncio.gather(*(one(item) for item in self.items))
        return self.result(pipeline.name, records, time.perf_counter() - started)

    def __call__(self, pipeline: Pipeline) -> EvalResult:
        """``evaluate`` from synchronous code (not from inside a running event loop)."""
        return asyncio.run(self.evaluate(pipeline))

    def result(self, pipeline: str, records: Iterable[QuestionRecord], wall_s: float = 0.0) -> EvalResult:
        """The EvalResult of already made records (in item order)."""
        records = tuple(records)
        scores = [score_question(item, r.to_prediction()) for item, r in zip(self.items, records, strict=True)]
        return EvalResult(
            set_name=self.eval_set.name, pipeline=pipeline, metrics=aggregate_scores(scores), records=records,
            wall_s=wall_s,
        )

    async def _ask(self, pipeline: Pipeline, item: QAItem) -> QuestionRecord:
        started = time.perf_counter()
        error = None
        answer: Answer | None = None
        retrieved: list[Retrieved] = []
        try:
            answer, retrieved = await asyncio.wait_for(pipeline.ask(item.question), self.timeout_s)
            if answer is None:
                error = "the pipeline returned no answer"
        except TimeoutError:
            error = f"timed out after {self.timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - one broken question must not end the run
            error = f"{type(exc).__name__}: {exc}"
        latency = time.perf_counter() - started
        pred = Prediction(id=item.id, answer=answer, retrieved=tuple(_retrieved(retrieved)), latency_s=latency)
        return make_record(item, pred, score_question(item, pred), error)


def _retrieved(retrieved: Iterable[Retrieved]) -> list[Retrieved]:
    return [(str(doc), int(start), int(end)) for doc, start, end in retrieved]
