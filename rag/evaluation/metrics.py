"""Scoring of predictions against an evaluation set, as defined in ``shared/eval/README.md``.

Text comparison follows the official SQuAD v2 evaluation script. ``aggregate`` returns every metric of the
README table; ``PRIMARY_METRIC`` names the one to rank systems by.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from rag.evaluation.dataset import QAItem
from rag.text import normalize_answer, number_values, numbers_match, single_number
from rag.types import Answer, Citation

PRIMARY_METRIC = "grounded_accuracy"
RECALL_AT = (1, 5, 10)

_SHORT_MIN_F1 = 0.5  # short style: best token F1 for a correct answer
_LONG_MIN_F1 = 0.2  # long style: best token F1, plus a citation on the gold document


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0 (SQuAD v2 ``compute_exact``)."""
    return float(normalize_answer(gold) == normalize_answer(pred))


def token_f1(pred: str, gold: str) -> float:
    """Token-level F1 of the normalised texts (SQuAD v2 ``compute_f1``).

    As in the official script, when either side has no tokens the score is 1.0 if both have none, else 0.0.
    """
    gold_tokens = _tokens(gold)
    pred_tokens = _tokens(pred)
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    num_same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def states_number(pred: str, gold: str) -> bool:
    """Whether ``gold`` is a single number and ``pred`` states a number equal to it (README "Numbers")."""
    value = single_number(gold)
    return value is not None and any(numbers_match(value, v) for v in number_values(pred))


def best_over(refs: Iterable[str], pred: str, fn: Callable[[str, str], float]) -> float:
    """The best ``fn(pred, ref)`` over the references; no references scores against "" as SQuAD v2 does."""
    refs = list(refs) or [""]
    return max(fn(pred, ref) for ref in refs)


def same_document(document: str, gold_doc: str) -> bool:
    """Whether a cited or retrieved document (possibly a relative path) is the gold document, by file name."""
    return _file_name(document) == _file_name(gold_doc)


def pages_meet(page_start: int, page_end: int, gold_pages: Sequence[int]) -> bool:
    """Whether the range [page_start, page_end] holds a gold page; with no gold pages, any range meets."""
    if not gold_pages:
        return True
    return any(page_start <= page <= page_end for page in gold_pages)


def _file_name(document: str) -> str:
    return PurePosixPath(document.replace("\\", "/")).name


@dataclass(frozen=True)
class Prediction:
    """What the system did for one question.

    ``answer`` is None when the question failed (exception, timeout): neither an answer nor an abstention.
    ``retrieved`` is the ranked list of retrieved passages as (document file name or relative path,
    page_start, page_end), best first.
    """

    id: str
    answer: Answer | None
    retrieved: tuple[tuple[str, int, int], ...]
    latency_s: float


@dataclass(frozen=True)
class QuestionScore:
    """The verdict on one question; ``aggregate`` sums these."""

    id: str
    answerable: bool
    failed: bool  # no outcome at all: scored as wrong, never as an answer or an abstention
    answered: bool  # an answer was given (not an abstention, not a failure)
    abstained: bool
    correct: bool
    grounded: bool
    em: float  # 0.0 unless answerable and answered
    f1: float
    first_relevant_rank: int | None  # 1-based rank of the first retrieved passage on the gold doc and pages
    latency_s: float

    @property
    def right(self) -> bool:
        """Counts for grounded accuracy: a grounded answer, or an abstention on an unanswerable question."""
        return self.grounded or (self.abstained and not self.answerable)


def first_relevant_rank(item: QAItem, retrieved: Sequence[tuple[str, int, int]]) -> int | None:
    """1-based rank of the first retrieved passage on the gold document whose pages meet the gold pages."""
    for rank, (document, page_start, page_end) in enumerate(retrieved, start=1):
        if same_document(document, item.doc) and pages_meet(page_start, page_end, item.pages):
            return rank
    return None


def score_question(item: QAItem, pred: Prediction) -> QuestionScore:
    """Score one prediction against its question with the README definitions of correct and grounded."""
    if pred.id != item.id:
        raise ValueError(f"prediction {pred.id!r} scored against question {item.id!r}")
    answer = pred.answer
    failed = answer is None
    abstained = answer is not None and answer.abstained
    answered = answer is not None and not answer.abstained

    em = f1 = 0.0
    correct = grounded = False
    if answer is not None and answered and item.answerable:
        em = best_over(item.answers, answer.text, exact_match)
        f1 = best_over(item.answers, answer.text, token_f1)
        on_gold_doc = [c for c in answer.citations if same_document(c.document, item.doc)]
        # The F1 part passes on F1 alone, or when a reference is one number the answer states (README "Numbers");
        # the reported F1 stays the plain SQuAD token F1.
        min_f1 = _SHORT_MIN_F1 if item.answer_style == "short" else _LONG_MIN_F1
        f1_part = f1 >= min_f1 or any(states_number(answer.text, ref) for ref in item.answers)
        if item.answer_style == "short":
            correct = f1_part
        else:
            correct = f1_part and bool(on_gold_doc)
        grounded = correct and any(_citation_meets(c, item.pages) for c in on_gold_doc)

    return QuestionScore(
        id=item.id,
        answerable=item.answerable,
        failed=failed,
        answered=answered,
        abstained=abstained,
        correct=correct,
        grounded=grounded,
        em=em,
        f1=f1,
        first_relevant_rank=first_relevant_rank(item, pred.retrieved),
        latency_s=pred.latency_s,
    )


def _citation_meets(citation: Citation, gold_pages: Sequence[int]) -> bool:
    return pages_meet(citation.page_start, citation.page_end, gold_pages)


def aggregate(items: Sequence[QAItem], preds: Iterable[Prediction]) -> dict[str, float | int]:
    """Every metric of the README table over ``items``; each item needs exactly one prediction (matched by id).

    Rates whose denominator is zero are 0.0 (e.g. abstention precision with no abstentions, abstention recall
    on a set without unanswerable questions, hallucination rate with no answers given, latency when every
    question failed). ``correct_rate``, EM, F1, recall@k and MRR are over answerable questions; latency is
    over questions that did not fail.
    """
    scores = score_all(items, preds)
    return aggregate_scores(scores)


def score_all(items: Sequence[QAItem], preds: Iterable[Prediction]) -> list[QuestionScore]:
    """Score each item against its prediction, matched by id; a missing, extra or duplicate id raises."""
    by_id: dict[str, Prediction] = {}
    for pred in preds:
        if pred.id in by_id:
            raise ValueError(f"two predictions for question {pred.id!r}")
        by_id[pred.id] = pred
    item_ids = {item.id for item in items}
    missing = [item.id for item in items if item.id not in by_id]
    extra = [pred_id for pred_id in by_id if pred_id not in item_ids]
    if missing or extra:
        raise ValueError(
            f"predictions do not match the questions: missing {missing[:5]} ({len(missing)} in all), "
            f"unknown {extra[:5]} ({len(extra)} in all)"
        )
    return [score_question(item, by_id[item.id]) for item in items]


def aggregate_scores(scores: Sequence[QuestionScore]) -> dict[str, float | int]:
    """The metrics dict of ``aggregate`` from already scored questions."""
    answerable = [s for s in scores if s.answerable]
    n_unanswerable = len(scores) - len(answerable)
    answered = [s for s in scores if s.answered]
    abstained = [s for s in scores if s.abstained]
    latencies = [s.latency_s for s in scores if not s.failed]
    ranks = [s.first_relevant_rank for s in answerable]

    metrics: dict[str, float | int] = {
        "n": len(scores),
        "n_answerable": len(answerable),
        "n_unanswerable": n_unanswerable,
        "answered": len(answered),
        "abstained": len(abstained),
        "failed": sum(s.failed for s in scores),
        PRIMARY_METRIC: _ratio(sum(s.right for s in scores), len(scores)),
        "correct_rate": _ratio(sum(s.correct for s in answerable), len(answerable)),
        "hallucination_rate": _ratio(sum(not s.grounded for s in answered), len(answered)),
        "abstention_precision": _ratio(sum(not s.answerable for s in abstained), len(abstained)),
        "abstention_recall": _ratio(sum(not s.answerable for s in abstained), n_unanswerable),
        "em": _ratio(sum(s.em for s in answerable), len(answerable)),
        "f1": _ratio(sum(s.f1 for s in answerable), len(answerable)),
    }
    for k in RECALL_AT:
        metrics[f"recall@{k}"] = _ratio(sum(r is not None and r <= k for r in ranks), len(answerable))
    metrics["mrr"] = _ratio(sum(1.0 / r for r in ranks if r is not None), len(answerable))
    metrics["latency_p50_s"] = _percentile(latencies, 50)
    metrics["latency_p95_s"] = _percentile(latencies, 95)
    return metrics


def _ratio(numerator: float, denominator: int) -> float:
    """numerator / denominator, with 0/0 defined as 0.0."""
    return float(numerator) / denominator if denominator else 0.0


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=float), q, method="linear"))
