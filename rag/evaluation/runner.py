"""Running an evaluation: questions and a pipeline in, per-question records and the metrics dict out.

    evaluator = Evaluator(eval_set, sample(eval_set.items, limit=40, seed=0))
    result = await evaluator.evaluate(OursPipeline(runtime))
    result.metrics[PRIMARY_METRIC]  # grounded accuracy, as defined in shared/eval/README.md

A pipeline is anything with a ``name`` and ``async ask(question) -> (Answer | None, retrieved)``: the service
in this process (``OursPipeline``), the service over HTTP (``HttpPipeline``) or the LangChain baseline
(``rag.evaluation.baseline.BaselinePipeline``). Each question runs under a time limit; an exception or a
timeout is recorded as a failed question (scored as wrong, never as an answer or an abstention) and the run
goes on.

``sweep_thresholds`` re-scores a run made with the gates open (``open_gates``) at a grid of relevance-gate and
support thresholds, offline: that is how ``retrieval.min_relevance`` and ``generation.min_support`` are chosen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.evaluation.dataset import EvalSet, QAItem
from rag.evaluation.metrics import PRIMARY_METRIC, Prediction, QuestionScore, aggregate_scores, score_question
from rag.settings import Settings
from rag.types import Answer, Citation, Quote

if TYPE_CHECKING:
    from rag.answering.service import AnswerService
    from rag.runtime import Runtime

Retrieved = tuple[str, int, int]  # (document, page_start, page_end), 1-based pages
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_CONCURRENCY = 4  # concurrent questions; the batcher merges them into one generate call
RETRIEVE_K = 10  # passages kept for recall@k and MRR (k up to 10)
SNIPPET_CHARS = 200  # citation text kept in a record, for reading the report


class Pipeline(Protocol):
    """A question-answering system under evaluation."""

    name: str

    async def ask(self, question: str) -> tuple[Answer | None, list[Retrieved]]:
        """The answer (None: no outcome) and the ranked passages retrieved for it, best first."""
        ...


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class QuestionRecord:
    """Everything known about one question of one run: what the pipeline did and how it scored.

    ``score`` holds the ``QuestionScore`` verdict (``correct``, ``grounded``, ``right``, ``em``, ``f1``, ...).
    Records round-trip through JSON (``to_dict`` / ``from_dict``) and back into a ``Prediction``, so a saved
    report can be re-scored.
    """

    id: str
    question: str
    answerable: bool
    answer: str | None
    abstained: bool
    reason: str | None
    support: float | None
    relevance: float | None
    draft: str | None
    citations: tuple[dict[str, Any], ...]
    retrieved: tuple[Retrieved, ...]
    latency_s: float
    error: str | None
    score: dict[str, Any] = field(default_factory=dict)
    confidence: float | None = None
    form: str | None = None
    features: dict[str, float] = field(default_factory=dict)  # confidence features, for fitting the calibrator
    quotes: tuple[dict[str, Any], ...] = ()

    @property
    def failed(self) -> bool:
        return self.answer is None

    @property
    def answered(self) -> bool:
        return not self.failed and not self.abstained

    def to_prediction(self) -> Prediction:
        """The ``Prediction`` this record was scored from."""
        answer = None
        if self.answer is not None:
            answer = Answer(
                text=self.answer, abstained=self.abstained, citations=tuple(Citation(**c) for c in self.citations),
                reason=self.reason, support=self.support, relevance=self.relevance, draft=self.draft,
                confidence=self.confidence, form=self.form, features=dict(self.features),
                quotes=tuple(Quote(**q) for q in self.quotes),
            )
        return Prediction(id=self.id, answer=answer, retrieved=self.retrieved, latency_s=self.latency_s)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["citations"] = [dict(c) for c in self.citations]
        data["retrieved"] = [list(r) for r in self.retrieved]
        data["quotes"] = [dict(q) for q in self.quotes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuestionRecord":
        return cls(
            **{
                **data,
                "citations": tuple(dict(c) for c in data["citations"]),
                "retrieved": tuple((str(d), int(s), int(e)) for d, s, e in data["retrieved"]),
                "quotes": tuple(dict(q) for q in data.get("quotes", ())),
            }
        )


def make_record(item: QAItem, pred: Prediction, score: QuestionScore, error: str | None = None) -> QuestionRecord:
    """The record of one scored prediction."""
    answer = pred.answer
    citations = () if answer is None else tuple(
        {**asdict(c), "snippet": c.snippet[:SNIPPET_CHARS]} for c in answer.citations
    )
    verdict = asdict(score)
    for key in ("id", "answerable", "latency_s"):  # already fields of the record
        verdict.pop(key)
    verdict["right"] = score.right
    return QuestionRecord(
        id=item.id, question=item.question, answerable=item.answerable,
        answer=None if answer is None else answer.text,
        abstained=answer is not None and answer.abstained,
        reason=None if answer is None else answer.reason,
        support=None if answer is None else answer.support,
        relevance=None if answer is None else answer.relevance,
        draft=None if answer is None else answer.draft,
        citations=citations, retrieved=tuple(pred.retrieved), latency_s=pred.latency_s, error=error, score=verdict,
        confidence=None if answer is None else answer.confidence,
        form=None if answer is None else answer.form,
        features={} if answer is None else dict(answer.features),
        quotes=() if answer is None else tuple(asdict(q) for q in answer.quotes),
    )


@dataclass(frozen=True)
class EvalResult:
    """One pipeline on one set: the metrics dict (with ``PRIMARY_METRIC``) and the per-question records."""

    set_name: str
    pipeline: str
    metrics: dict[str, float | int]
    records: tuple[QuestionRecord, ...]
    wall_s: float

    @property
    def primary(self) -> float:
        return float(self.metrics[PRIMARY_METRIC])


# -------------------------------------------------------------------------------------------- evaluator


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


# -------------------------------------------------------------------------------------------- pipelines


class OursPipeline:
    """The grounded service in this process.

    ``answers`` defaults to ``runtime.answers`` (pass ``open_gates(runtime)`` for a threshold sweep). The
    retrieved list for recall@k is a separate ``retrieve(question, top_k=10)``: the service retrieves again
    inside ``answer`` (milliseconds, next to generation), and its top_k passages are a prefix of these 10.
    """

    def __init__(
        self, runtime: "Runtime", answers: "AnswerService | None" = None, *, name: str = "ours",
        top_k: int | None = None, max_new_tokens: int | None = None, retrieve_k: int = RETRIEVE_K,
    ):
        answers = answers or runtime.answers
        if answers is None or runtime.retriever is None:
            raise ValueError("OursPipeline needs a Runtime started with its generator (Runtime(settings).start())")
        self.name = name
        self.retriever = runtime.retriever
        self.answers = answers
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.retrieve_k = retrieve_k

    async def ask(self, question: str) -> tuple[Answer | None, list[Retrieved]]:
        passages = await asyncio.to_thread(self.retriever.retrieve, question, self.retrieve_k)
        retrieved = [(p.chunk.document, p.chunk.page_start, p.chunk.page_end) for p in passages]
        answer = await self.answers.answer(question, self.top_k, self.max_new_tokens)
        return answer, retrieved


class HttpPipeline:
    """The service over HTTP: POST {url}/v1/query. Its retrieved list is the answer's citations.

    The server answers from its own index: ingest the set's docs/ into it first (``rag-ingest``).
    """

    def __init__(
        self, url: str, api_key: str | None = None, *, name: str = "ours", top_k: int | None = None,
        max_new_tokens: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, transport: Any = None,
    ):
        import httpx

        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.name = name
        self.url = url.rstrip("/")
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # transport: an httpx transport to use instead of the network (tests pass httpx.MockTransport)
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)

    async def ask(self, question: str) -> tuple[Answer | None, list[Retrieved]]:
        body: dict[str, Any] = {"question": question}
        if self.top_k is not None:
            body["top_k"] = self.top_k
        if self.max_new_tokens is not None:
            body["max_new_tokens"] = self.max_new_tokens
        response = await self._client.post("/v1/query", json=body)
        if response.is_error:
            raise RuntimeError(f"POST {self.url}/v1/query: HTTP {response.status_code}: {response.text[:300]}")
        answer = answer_from_json(response.json())
        return answer, [(c.document, c.page_start, c.page_end) for c in answer.citations]

    async def aclose(self) -> None:
        await self._client.aclose()


def answer_from_json(data: dict[str, Any]) -> Answer:
    """An ``Answer`` from a /v1/query response body."""
    citations = tuple(
        Citation(
            document=c["document"], page_start=int(c["pages"][0]), page_end=int(c["pages"][1]),
            snippet=c.get("snippet", ""), score=float(c.get("score", 0.0)), chunk_id=int(c.get("chunk_id", -1)),
        )
        for c in data.get("citations", [])
    )
    return Answer(
        text=data["answer"], abstained=bool(data["abstained"]), citations=citations,
        timings=dict(data.get("timings") or {}), reason=data.get("reason"), support=data.get("support"),
        relevance=data.get("relevance"), confidence=data.get("confidence"), form=data.get("form"),
        quotes=tuple(
            Quote(text=q["text"], document=q["document"], page_start=int(q["pages"][0]), page_end=int(q["pages"][1]),
                  chunk_id=-1, score=float(q.get("score", 0.0)))
            for q in data.get("quotes", [])
        ),
    )


# ------------------------------------------------------------------------------------- runtimes per set


def open_gates(runtime: "Runtime") -> "AnswerService":
    """An AnswerService over the runtime's models with both gates open (min_relevance -1, min_support 0).

    Every question is generated and verified, and every answer with a cited passage is kept, with its
    relevance and support recorded: the input ``sweep_thresholds`` needs.
    """
    from rag.answering.service import AnswerService

    if runtime.answers is None:
        raise ValueError("open_gates needs a Runtime started with its generator")
    settings = runtime.settings.model_copy(deep=True)
    settings.retrieval.min_relevance = -1.0
    settings.generation.min_support = 0.0
    settings.generation.min_confidence = 0.0
    return AnswerService(runtime.retriever, runtime.llm, runtime.batcher, settings, runtime.answers.calibrator)


def runtime_for_index(base: "Runtime", settings: Settings) -> "Runtime":
    """A Runtime over ``settings.index.path`` that shares ``base``'s loaded models (no second copy of weights).

    Close it with ``close_shared(runtime)``, which closes only its index: the batcher belongs to ``base``.
    """
    from rag.answering.service import AnswerService
    from rag.runtime import Runtime, make_ingestor
    from rag.indexing.index import DocumentIndex
    from rag.answering.retrieval import HybridRetriever

    if base.embedder is None:
        raise ValueError("runtime_for_index needs a started base Runtime")
    runtime = Runtime(settings)
    runtime.embedder, runtime.llm, runtime.batcher = base.embedder, base.llm, base.batcher
    runtime.index = DocumentIndex.open(settings.index.path, settings.index, create=True)
    runtime.ingestor = make_ingestor(settings, base.embedder, base.embedder.model_path)
    runtime.retriever = HybridRetriever(runtime.index, runtime.embedder, settings.retrieval).load()
    if base.answers is not None:
        runtime.answers = AnswerService(runtime.retriever, base.llm, base.batcher, settings, base.answers.calibrator)
    return runtime


def close_shared(runtime: "Runtime") -> None:
    """Close a ``runtime_for_index`` Runtime: its index only."""
    if runtime.index is not None:
        runtime.index.close()


# ------------------------------------------------------------------------------------- threshold sweep


@dataclass(frozen=True)
class SweepPoint:
    """The metrics had the gates been at (min_relevance, min_support)."""

    min_relevance: float
    min_support: float
    metrics: dict[str, float | int]


def default_grid(configured: float, low: float, high: float, step: float) -> list[float]:
    """Thresholds from ``low`` to ``high`` every ``step``, plus the configured value."""
    values = np.round(np.arange(low, high + step / 2, step), 4).tolist()
    return sorted({*values, round(float(configured), 4)})


def apply_thresholds(record: QuestionRecord, min_relevance: float, min_support: float) -> Prediction:
    """The prediction with the gates at these thresholds: an answer whose relevance is below ``min_relevance``
    or whose support is below ``min_support`` becomes an abstention. A score the pipeline did not report
    (None) does not gate. Abstentions and failures stay as they are."""
    pred = record.to_prediction()
    if not record.answered or pred.answer is None:
        return pred
    low_relevance = record.relevance is not None and record.relevance < min_relevance
    low_support = record.support is not None and record.support < min_support
    if not (low_relevance or low_support):
        return pred
    from rag.answering.prompting import ABSTAIN_TEXT

    reason = "relevance gate (offline)" if low_relevance else "support threshold (offline)"
    abstention = replace(pred.answer, text=ABSTAIN_TEXT, abstained=True, reason=reason, draft=record.answer)
    return replace(pred, answer=abstention)


def sweep_thresholds(
    items: Sequence[QAItem], records: Sequence[QuestionRecord], relevance_grid: Sequence[float],
    support_grid: Sequence[float],
) -> list[SweepPoint]:
    """Every metric at every (min_relevance, min_support) of the grid, recomputed from one open-gates run."""
    by_id = {r.id: r for r in records}
    missing = [item.id for item in items if item.id not in by_id]
    if missing:
        raise ValueError(f"no record for {len(missing)} questions, e.g. {missing[:3]}")
    points = []
    for g in relevance_grid:
        for s in support_grid:
            scores = [score_question(item, apply_thresholds(by_id[item.id], g, s)) for item in items]
            points.append(SweepPoint(float(g), float(s), aggregate_scores(scores)))
    return points


def best_point(points: Sequence[SweepPoint]) -> SweepPoint:
    """The point of highest grounded accuracy; ties go to the lower hallucination rate, then to the lowest
    thresholds (the least abstention that reaches it)."""
    if not points:
        raise ValueError("no sweep points")
    return max(
        points,
        key=lambda p: (p.metrics[PRIMARY_METRIC], -p.metrics["hallucination_rate"], -p.min_relevance, -p.min_support),
    )
