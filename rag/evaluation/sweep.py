"""The abstention trade-off, offline: one run made with the gates open (``rag.evaluation.pipelines.open_gates``)
re-scored at a grid of relevance-gate and support thresholds. That is how ``retrieval.min_relevance`` and
``generation.min_confidence`` are chosen.

    result = await evaluator.evaluate(OursPipeline(open_gates(runtime), name="ours (gates open)"))
    sweep = Sweep.of(items, result, configured=(0.60, 0.55))
    sweep.best.min_relevance, sweep.best.metrics[PRIMARY_METRIC]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from rag.evaluation.dataset import QAItem
from rag.evaluation.metrics import PRIMARY_METRIC, Prediction, aggregate_scores, score_question
from rag.evaluation.records import EvalResult, QuestionRecord

# Threshold grids (low, high, step); the configured values are added to them.
RELEVANCE_GRID = (0.0, 0.8, 0.05)  # cosine of the best passage
CONFIDENCE_GRID = (0.0, 1.0, 0.05)


@dataclass(frozen=True)
class SweepPoint:
    """The metrics had the gates been at (min_relevance, min_confidence)."""

    min_relevance: float
    min_confidence: float
    metrics: dict[str, float | int]


def default_grid(configured: float, low: float, high: float, step: float) -> list[float]:
    """Thresholds from ``low`` to ``high`` every ``step``, plus the configured value."""
    values = np.round(np.arange(low, high + step / 2, step), 4).tolist()
    return sorted({*values, round(float(configured), 4)})


def apply_thresholds(record: QuestionRecord, min_relevance: float, min_confidence: float) -> Prediction:
    """The prediction with the gates at these thresholds: an answer whose relevance is below ``min_relevance``
    or whose support is below ``min_confidence`` becomes an abstention. A score the pipeline did not report
    (None) does not gate. Abstentions and failures stay as they are."""
    pred = record.to_prediction()
    if not record.answered or pred.answer is None:
        return pred
    low_relevance = record.relevance is not None and record.relevance < min_relevance
    low_confidence = record.confidence is not None and record.confidence < min_confidence
    if not (low_relevance or low_confidence):
        return pred
    from rag.answering.prompting import ABSTAIN_TEXT

    reason = "relevance gate (offline)" if low_relevance else "confidence threshold (offline)"
    abstention = replace(pred.answer, text=ABSTAIN_TEXT, abstained=True, reason=reason, draft=record.answer)
    return replace(pred, answer=abstention)


def sweep_thresholds(
    items: Sequence[QAItem], records: Sequence[QuestionRecord], relevance_grid: Sequence[float],
    confidence_grid: Sequence[float],
) -> list[SweepPoint]:
    """Every metric at every (min_relevance, min_confidence) of the grid, recomputed from one open-gates run."""
    by_id = {r.id: r for r in records}
    missing = [item.id for item in items if item.id not in by_id]
    if missing:
        raise ValueError(f"no record for {len(missing)} questions, e.g. {missing[:3]}")
    points = []
    for g in relevance_grid:
        for s in confidence_grid:
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
        key=lambda p: (p.metrics[PRIMARY_METRIC], -p.metrics["hallucination_rate"], -p.min_relevance, -p.min_confidence),
    )


@dataclass(frozen=True)
class Sweep:
    """The grid re-scored from one open-gates run: every point, the best one, its ties, and the configured one.

    ``span`` is the range of each threshold over the points that tie with the best grounded accuracy.
    """

    configured: SweepPoint
    relevance_grid: tuple[float, ...]
    confidence_grid: tuple[float, ...]
    points: tuple[SweepPoint, ...]
    best: SweepPoint
    ties: int
    span: dict[str, tuple[float, float]]
    open_run: EvalResult

    @classmethod
    def of(cls, items: Sequence[QAItem], open_run: EvalResult, configured: tuple[float, float]) -> "Sweep":
        """Re-score ``open_run`` over the default grids around ``configured`` (min_relevance, min_confidence)."""
        min_relevance, min_confidence = configured
        relevance_grid = default_grid(min_relevance, *RELEVANCE_GRID)
        confidence_grid = default_grid(min_confidence, *CONFIDENCE_GRID)
        points = sweep_thresholds(items, open_run.records, relevance_grid, confidence_grid)
        best = best_point(points)
        [at_configured] = sweep_thresholds(items, open_run.records, [min_relevance], [min_confidence])
        ties = [p for p in points if p.metrics[PRIMARY_METRIC] == best.metrics[PRIMARY_METRIC]]
        span = {
            key: (min(getattr(p, key) for p in ties), max(getattr(p, key) for p in ties))
            for key in ("min_relevance", "min_confidence")
        }
        return cls(
            configured=at_configured, relevance_grid=tuple(relevance_grid), confidence_grid=tuple(confidence_grid),
            points=tuple(points), best=best, ties=len(ties), span=span, open_run=open_run,
        )

    def describe(self) -> str:
        """One sentence: where grounded accuracy peaks, and what the configured thresholds give."""
        best, conf, span = self.best, self.configured, self.span
        return (
            f"grounded accuracy is highest, {best.metrics[PRIMARY_METRIC]:.3f} (hallucination rate "
            f"{best.metrics['hallucination_rate']:.3f}), at min_relevance {best.min_relevance:.2f} and min_confidence "
            f"{best.min_confidence:.2f}; configured ({conf.min_relevance:.2f}, {conf.min_confidence:.2f}) gives "
            f"{conf.metrics[PRIMARY_METRIC]:.3f} ({self.ties} grid points tie, spanning min_relevance "
            f"{span['min_relevance'][0]:.2f}-{span['min_relevance'][1]:.2f} and min_confidence "
            f"{span['min_confidence'][0]:.2f}-{span['min_confidence'][1]:.2f})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The report's form (``sweep`` of a set entry)."""
        return {
            "configured": {"min_relevance": self.configured.min_relevance, "min_confidence": self.configured.min_confidence},
            "grid": {"min_relevance": list(self.relevance_grid), "min_confidence": list(self.confidence_grid)},
            "points": [asdict(p) for p in self.points],
            "best": asdict(self.best),
            "best_ties": self.ties,
            "best_span": {key: list(value) for key, value in self.span.items()},
            "at_configured": self.configured.metrics,
            "open_run": self.open_run.to_dict(),
        }
