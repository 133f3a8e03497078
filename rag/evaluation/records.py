"""What an evaluation run produces: one ``QuestionRecord`` per question and the ``EvalResult`` of a run.

A pipeline under evaluation is anything with a ``name`` and ``async ask(question) -> (Answer | None,
retrieved)`` (``Pipeline``); the records keep what it did and how each question scored, and round-trip
through JSON so a saved report can be re-scored offline (``rag.evaluation.sweep``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rag.evaluation.dataset import QAItem
from rag.evaluation.metrics import PRIMARY_METRIC, Prediction, QuestionScore
from rag.types import Answer, Citation, Quote

Retrieved = tuple[str, int, int]  # (document, page_start, page_end), 1-based pages
SNIPPET_CHARS = 200  # citation text kept in a record, for reading the report


class Pipeline(Protocol):
    """A question-answering system under evaluation."""

    name: str

    async def ask(self, question: str) -> tuple[Answer | None, list[Retrieved]]:
        """The answer (None: no outcome) and the ranked passages retrieved for it, best first."""
        ...


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
    nearest: tuple[dict[str, Any], ...] = ()  # an abstention's nearest passages (its citations are empty)

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
                quotes=tuple(Quote(**q) for q in self.quotes), nearest=tuple(Citation(**c) for c in self.nearest),
            )
        return Prediction(id=self.id, answer=answer, retrieved=self.retrieved, latency_s=self.latency_s)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["citations"] = [dict(c) for c in self.citations]
        data["nearest"] = [dict(c) for c in self.nearest]
        data["quotes"] = [dict(q) for q in self.quotes]
        data["retrieved"] = [list(r) for r in self.retrieved]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuestionRecord":
        return cls(
            **{
                **data,
                "citations": tuple(dict(c) for c in data["citations"]),
                "nearest": tuple(dict(c) for c in data.get("nearest", ())),
                "quotes": tuple(dict(q) for q in data.get("quotes", ())),
                "retrieved": tuple((str(d), int(s), int(e)) for d, s, e in data["retrieved"]),
            }
        )


def make_record(item: QAItem, pred: Prediction, score: QuestionScore, error: str | None = None) -> QuestionRecord:
    """The record of one scored prediction."""
    answer = pred.answer

    def cited(citations: tuple[Citation, ...]) -> tuple[dict[str, Any], ...]:
        return tuple({**asdict(c), "snippet": c.snippet[:SNIPPET_CHARS]} for c in citations)

    citations = () if answer is None else cited(answer.citations)
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
        nearest=() if answer is None else cited(answer.nearest),
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

    def to_dict(self) -> dict[str, Any]:
        """The report's form: ``{"n", "metrics", "wall_s", "records"}``."""
        return {
            "n": self.metrics["n"],
            "metrics": self.metrics,
            "wall_s": round(self.wall_s, 2),
            "records": [r.to_dict() for r in self.records],
        }
