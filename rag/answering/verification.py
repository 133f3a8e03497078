"""Lexical support: how much of what an answer claims is written in its evidence.

The share of the content words the answer adds to the question that occur in the evidence: a small model
answering from memory uses words the evidence lacks; an answer that only restates the question adds none and
scores 0. Reported with every answer (``support``); the decision to answer is the calibrated confidence's.
"""

from __future__ import annotations

from rag.text import STOPWORDS, normalize_answer
from rag.types import Passage


def content_words(text: str) -> list[str]:
    """SQuAD-normalised tokens minus stopwords."""
    return [w for w in normalize_answer(text).split() if w not in STOPWORDS]


def lexical_support(answer: str, passages: list[Passage], question: str = "") -> float:
    """Share of the content words the answer adds to ``question`` that the passages contain; 0 when it adds none."""
    return lexical_support_text(answer, " ".join(p.chunk.text for p in passages), question)


def lexical_support_text(answer: str, evidence: str, question: str = "") -> float:
    """``lexical_support`` against one evidence text."""
    words = added_words(answer, question)
    if not words:
        return 0.0
    vocabulary = set(normalize_answer(evidence).split())
    return sum(w in vocabulary for w in words) / len(words)


def added_words(answer: str, question: str) -> list[str]:
    """The content words of ``answer`` that ``question`` does not hold."""
    asked = set(content_words(question))
    return [w for w in content_words(answer) if w not in asked]


def restates_question(answer: str, question: str) -> bool:
    """True when a span answer, cut to the span the service shows (``short_span``), holds no content word the
    question lacks: "Who notably improved the Savery water pump?" answered "Savery". A small model copies the
    question's words when the quotes do not answer it; such a span is no answer (on squad2-dev, 8 of 9 were
    wrong), so the service treats it as declining."""
    from rag.answering.prompting import short_span

    return not added_words(short_span(answer, question), question)
