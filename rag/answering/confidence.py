"""Calibrated confidence: per-question features and a small logistic model that turns them into P(right).

The features say what a careful reader checks before trusting an answer: did retrieval find something close
(dense and BM25 scores, their agreement), does the evidence sentence cover what the question names (SQuAD 2.0's
unanswerable questions swap exactly those: a name, a number, a date), did the generator hesitate (probability of
the abstain marker at the first token, log-probabilities of its answer), is the answer copied from the evidence,
and is it of the type asked for (a number for "how many", a year for "when").

The model is fitted offline on the dev sets (``rag.evaluation.calibration``) and shipped as a versioned JSON
file of standardisation constants and coefficients, so serving needs no scikit-learn and the numbers can be read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.answering.evidence import Evidence
from rag.text import content_words, normalize_answer, number_values, numbers_in
from rag.types import Passage, Quote

DEFAULT_CALIBRATOR = Path(__file__).with_name("calibrator.json")

_CAPITALISED = re.compile(r"\b[A-Z][\w'-]*")
_YEAR = re.compile(r"\b1[0-9]{3}\b|\b20[0-9]{2}\b")
_MONTHS = re.compile(
    r"\b(january|february|march|april|may|june|july|august|september|october|november|december|century|"
    r"decade|year|day)s?\b", re.IGNORECASE,
)


@dataclass(frozen=True)
class Generated:
    """What the generator produced for one question, as the features need it."""

    text: str  # the answer alone (labels and markers removed)
    declined: bool  # it wrote the abstain marker (or a paraphrase)
    token_logprobs: tuple[float, ...]
    probe_probability: float | None  # P(first token is the marker's first word)


def question_names(question: str) -> set[str]:
    """Capitalised words after the first one: the names a question is about ("Who founded Cambridge in 1650?")."""
    words = _CAPITALISED.findall(question)[1:] if question[:1].isupper() else _CAPITALISED.findall(question)
    return {normalize_answer(w) for w in words if normalize_answer(w)}


def coverage(asked: set[str], text: str) -> float:
    """Share of ``asked`` tokens found in ``text`` (1.0 when nothing is asked)."""
    if not asked:
        return 1.0
    present = set(normalize_answer(text).split()) | set(content_words(text)) | set(numbers_in(text))
    return sum(w in present for w in asked) / len(asked)


def answer_in_evidence(answer: str, quotes: Sequence[Quote]) -> bool:
    """Whether the normalised answer occurs in the normalised quotes (a span copied, not invented)."""
    needle = normalize_answer(answer)
    return bool(needle) and any(needle in normalize_answer(q.text) for q in quotes)


def type_match(question: str, answer: str) -> float:
    """1 when the answer has the type the question asks for, 0 when it clearly has not, 0.5 when unknown."""
    q = question.lower()
    if re.search(r"\bhow\s+(many|much)\b|\bwhat\s+(percentage|percent|number|amount)\b", q):
        return float(bool(number_values(answer)))
    if re.search(r"\b(when|what\s+year|which\s+year|what\s+date|what\s+century)\b", q):
        return float(bool(_YEAR.search(answer) or _MONTHS.search(answer) or number_values(answer)))
    if re.match(r"\s*who\b", q):
        return float(bool(_CAPITALISED.search(answer)))
    return 0.5


def features(
    question: str, form: str, passages: Sequence[Passage], evidence: Evidence, generated: Generated,
    answer_quotes: Sequence[Quote],
) -> dict[str, float]:
    """The feature vector of one answered (or declined) question, by name."""
    dense = [p.dense_score for p in passages if p.dense_score is not None]
    bm25 = [p.bm25_score for p in passages if p.bm25_score is not None]
    best_dense = max(dense, default=0.0)
    by_dense = max(passages, key=lambda p: p.dense_score if p.dense_score is not None else -1.0, default=None)
    by_bm25 = max(passages, key=lambda p: p.bm25_score if p.bm25_score is not None else -1.0, default=None)
    best = evidence.best
    support = " ".join(q.text for q in (answer_quotes or evidence.quotes[:1]))
    asked_words = set(content_words(question))
    asked_numbers = set(numbers_in(question))
    names = question_names(question)
    logprobs = generated.token_logprobs
    probe = generated.probe_probability
    return {
        "relevance": best_dense,
        "bm25_top": math.log1p(max(bm25, default=0.0)),
        "retrievers_agree": float(by_dense is not None and by_dense is by_bm25),
        "sentence_dense": best.dense if best else 0.0,
        "sentence_lexical": best.lexical if best else 0.0,
        "support_words": coverage(asked_words, support),
        "support_numbers": coverage(asked_numbers, support),
        "support_names": coverage(names, support),
        "probe_logit": _logit(probe if probe is not None else 0.5),
        "mean_logprob": sum(logprobs) / len(logprobs) if logprobs else 0.0,
        "min_logprob": min(logprobs, default=0.0),
        "declined": float(generated.declined),
        "in_evidence": float(answer_in_evidence(generated.text, evidence.quotes)),
        "answer_words": math.log1p(len(generated.text.split())),
        "type_match": type_match(question, generated.text),
        "long_form": float(form == "long"),
    }


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class Calibrator:
    """A fitted logistic model: confidence = sigmoid(intercept + sum coef * (x - mean) / scale).

    ``threshold`` is the confidence below which the service abstains, chosen with the model (see its file's
    ``provenance``). ``version`` names the file's format and fit.
    """

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float
    version: str = "unversioned"
    provenance: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        n = len(self.names)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ValueError("calibrator: names, mean, scale and coef must have the same length")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"calibrator threshold must be in [0, 1], got {self.threshold}")

    def confidence(self, values: Mapping[str, float]) -> float:
        """P(the answer is right) for one feature dict; a missing feature raises KeyError naming it."""
        z = self.intercept
        for name, mean, scale, coef in zip(self.names, self.mean, self.scale, self.coef, strict=True):
            z += coef * (float(values[name]) - mean) / (scale or 1.0)
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    @classmethod
    def load(cls, path: Path) -> "Calibrator":
        """Read a calibrator file; a missing or malformed file raises ValueError naming it."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(
                names=tuple(data["features"]), mean=tuple(data["mean"]), scale=tuple(data["scale"]),
                coef=tuple(data["coef"]), intercept=float(data["intercept"]), threshold=float(data["threshold"]),
                version=str(data.get("version", "unversioned")), provenance=data.get("provenance"),
            )
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read calibrator {path}: {exc}") from exc

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version, "features": list(self.names), "mean": list(self.mean),
            "scale": list(self.scale), "coef": list(self.coef), "intercept": self.intercept,
            "threshold": self.threshold, "provenance": dict(self.provenance or {}),
        }


# The features read from token log-probabilities: a backend that returns none cannot fill them.
LOGPROB_FEATURES = ("probe_logit", "mean_logprob", "min_logprob")


def without_logprobs(values: Mapping[str, float], calibrator: Calibrator | None) -> dict[str, float]:
    """``values`` for a generation whose backend returned no log-probabilities: the log-probability features take
    the calibrator's mean (a neutral term: neither for nor against the answer, where an empty list would read
    as certainty), and ``logprobs_available`` = 0.0 says so in the answer's features."""
    neutral = dict(zip(calibrator.names, calibrator.mean)) if calibrator is not None else {}
    marked = dict(values)
    for name in LOGPROB_FEATURES:
        marked[name] = float(neutral.get(name, 0.0))
    marked["logprobs_available"] = 0.0
    return marked
