"""Lexical support: how much of what an answer claims is written in its evidence.

The share of the content words the answer adds to the question that occur in the evidence: a small model
answering from memory uses words the evidence lacks; an answer that only restates the question adds none and
scores 0. Reported with every answer (``support``); the decision to answer is the calibrated confidence's.

``unquoted_figures``: the figures an answer states that its quotes do not. A span with one is not given; a
sentence answer lists them for the reader to check (the word-overlap metric cannot see a wrong figure).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.text import STOPWORDS, figures, normalize_answer, number_values, numbers_match
from rag.types import Passage

# Numbers written as words in the evidence ("two kinds of X.25 networks"), which an answer may give as digits.
_WORD_VALUES = {
    word: float(value) for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
} | {"thirty": 30.0, "forty": 40.0, "fifty": 50.0, "hundred": 100.0, "thousand": 1000.0, "dozen": 12.0}
# A number opening a line as "1." or "2)" numbers the answer's own points ("1. Market volatility: ..."): not a figure.
_LIST_MARKER = re.compile(r"^([ \t]*[-*]?[ \t]*)\d{1,2}[.)](?=\s)", re.MULTILINE)


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


def unquoted_figures(answer: str, evidence: Sequence[str], question: str = "") -> tuple[str, ...]:
    """The figures ``answer`` states that neither its ``evidence`` texts nor the ``question`` state, as written,
    each once, in order: "$1.1 billion" for R&D when the quotes hold "6,844".

    Values are compared as the metric compares numbers (separators, "$" and "%" ignored; equal within 0.5%),
    except that a whole number must be the quoted one or the quoted one rounded. A scale word is not applied, so
    "1.1 billion" is not found in "1,100 million": such a figure is shown to the reader to check, which is the
    point. A number the evidence writes as a word ("two kinds") counts as stated; list markers ("1. ", "2) "
    opening a line) are not figures.
    """
    stated = number_values(question) + _number_words(question)
    for text in evidence:
        stated.extend(number_values(text) + _number_words(text))
    missing: list[str] = []
    for written, value in figures(_LIST_MARKER.sub(r"\1", answer)):
        if written not in missing and not any(_same_figure(value, known) for known in stated):
            missing.append(written)
    return tuple(missing)


def _same_figure(value: float, known: float) -> bool:
    """A whole number must be the quoted one or the quoted one rounded ("31%" for "30.8%"): the metric's 0.5%
    would let "1907" pass for "1905". Other values match as the metric matches them."""
    if value.is_integer():
        return value == round(known)
    return numbers_match(value, known)


def _number_words(text: str) -> list[float]:
    return [_WORD_VALUES[w] for w in normalize_answer(text).split() if w in _WORD_VALUES]
