"""What a generated reply goes through before it is given: read, presented, checked, in one place.

    reply -> ``read_reply`` (the answer text, whether the generator declined or only echoed the question, the
    quotes it rests on) -> the calibrated confidence (the service's, from the same Draft) -> ``finish``: the
    answer as the reader gets it (``prompting.present``), the figures no quote states, the calculation, and
    the CHECKS in order; the first check that returns a reason turns the answer into an abstention.

Each check is a named function of the Draft that returns None (keep) or the reason to decline, shown to the
user. The order matters only for which reason is given when several apply; it is the order the service has
always applied them in (re-scoring recorded answers gives the same outcomes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rag.answering.calculation import Calculation, CalculationError, asks_for_calculation, calculation_line, check
from rag.answering.confidence import answer_in_evidence
from rag.answering.prompting import AnswerForm, answer_text, cited_numbers, is_abstention, present
from rag.answering.verification import restates_question, unquoted_figures
from rag.text import normalize_answer
from rag.types import Quote


@dataclass(frozen=True)
class Draft:
    """A reply as the checks see it."""

    question: str
    form: AnswerForm
    raw: str  # the reply as generated, after the prefilled "Answer:"
    text: str  # the answer alone: no label, Source or Calculation line, [n] markers
    generator_declined: bool  # the abstain marker, a paraphrase of it, or nothing
    echoed: bool  # a span made only of the question's own words: the model copies them when the quotes lack it
    quotes: tuple[Quote, ...]  # every quote the generator was shown
    used: tuple[Quote, ...]  # the quotes the answer rests on
    presented: str = ""  # the answer as the reader gets it (set by ``finish``)
    unquoted: tuple[str, ...] = ()  # figures of ``presented`` that no quote (nor the question) states
    calculation: Calculation | None = None
    calculation_refused: str | None = None  # why the reply's Calculation line was not computed
    confidence: float | None = None
    min_confidence: float = 0.0

    @property
    def declined(self) -> bool:
        """No answer to give: the generator declined, or only echoed the question."""
        return self.generator_declined or self.echoed


def read_reply(question: str, form: AnswerForm, raw: str, quotes: Sequence[Quote]) -> Draft:
    """The Draft of a reply over ``quotes``: its answer text, whether it declines, and the quotes it rests on."""
    text = answer_text(raw)
    generator_declined = is_abstention(raw) or not text
    echoed = not generator_declined and form == "short" and restates_question(text, question)
    used = answer_quotes(text, list(quotes), cited_numbers(raw, len(quotes)))
    return Draft(question=question, form=form, raw=raw, text=text, generator_declined=generator_declined,
                 echoed=echoed, quotes=tuple(quotes), used=tuple(used))


def answer_quotes(answer: str, quotes: list[Quote], cited: list[int]) -> list[Quote]:
    """The quotes the answer rests on: those containing the answer span, else the ones the model cited, else
    those sharing the most of its words (never a guess from rank alone)."""
    if not answer:
        return []
    containing = [q for q in quotes if answer_in_evidence(answer, [q])]
    if containing:
        return containing[:2]
    if cited:
        return [quotes[n - 1] for n in cited][:3]
    words = set(normalize_answer(answer).split())
    overlaps = [len(words & set(normalize_answer(q.text).split())) for q in quotes]
    best = max(overlaps, default=0)
    return [q for q, o in zip(quotes, overlaps) if o == best and best > 0][:2]


# --- the checks, in order: each returns None to keep the answer or the reason to decline it ---------------------

def restates_the_question(draft: Draft) -> str | None:
    # "Savery" to "Who improved the Savery pump?": on squad2-dev 8 of 9 such spans were wrong.
    return "the answer only repeats the question's words" if draft.echoed else None


def span_figure_not_quoted(draft: Draft) -> str | None:
    # "How many stories does the Lavietes Pavilion have?" -> "2", no 2 (or "two") in the quotes: in the dev sets'
    # recorded answers every such span (3 on squad2-dev) was wrong. A sentence answer lists them instead.
    return "the answer's figure is not in the quotes" if draft.form == "short" and draft.unquoted else None


def generator_declined(draft: Draft) -> str | None:
    return "the generator found no answer in the quotes" if draft.declined else None


def not_in_the_quotes(draft: Draft) -> str | None:
    return "the answer is not in the quoted evidence" if not draft.used else None


def below_confidence(draft: Draft) -> str | None:
    if draft.confidence is not None and draft.confidence < draft.min_confidence:
        return f"confidence {draft.confidence:.2f} is below {draft.min_confidence:.2f}"
    return None


Check = Callable[[Draft], str | None]
CHECKS: tuple[tuple[str, Check], ...] = (
    ("restates the question", restates_the_question),
    ("span figure not quoted", span_figure_not_quoted),
    ("generator declined", generator_declined),
    ("not in the quotes", not_in_the_quotes),
    ("below confidence", below_confidence),
)


@dataclass(frozen=True)
class Verdict:
    """The outcome of ``finish``: ``reason`` is None when the answer is given."""

    draft: Draft
    check: str | None = None  # the name of the check that declined it
    reason: str | None = None

    @property
    def keeps_draft(self) -> bool:
        """Whether the abstention shows what the generator said (not when the generator itself declined)."""
        return self.reason is not None and self.check != "generator declined"

    @property
    def cited(self) -> tuple[Quote, ...]:
        """The quotes the given answer cites: a span the ones that hold it; sentences, written from every quote
        shown, all of them, the ones the answer visibly rests on first."""
        draft = self.draft
        if draft.form == "long":
            return draft.used + tuple(q for q in draft.quotes if q not in draft.used)
        return draft.used


def finish(draft: Draft, confidence: float | None, min_confidence: float, calculate: bool = False,
           checks: Sequence[tuple[str, Check]] = CHECKS) -> Verdict:
    """Present the answer, find the figures no quote states, compute its calculation (``calculate``: a sentence
    answer to a question asking for a ratio, change or sum), then run ``checks`` in order."""
    presented = present(draft.question, draft.form, draft.text, draft.used) if draft.used else draft.text
    # A span is checked against the quotes that hold it; sentences, written from every quote shown, against all.
    checked = draft.used if draft.form == "short" else draft.quotes
    unquoted = unquoted_figures(presented, [q.text for q in checked], draft.question) if (
        draft.used and not draft.declined) else ()
    calculation, refused = None, None
    if calculate and draft.form == "long" and not draft.declined and asks_for_calculation(draft.question):
        expression = calculation_line(draft.raw)
        if expression is not None:
            try:
                calculation = check(expression, draft.quotes)
            except CalculationError as exc:
                refused = str(exc)
    if calculation is not None:
        presented = f"{presented.rstrip()} Computed: {calculation.expression} = {calculation.result_text()}."
    draft = replace(draft, presented=presented, unquoted=unquoted, calculation=calculation,
                    calculation_refused=refused, confidence=confidence, min_confidence=min_confidence)
    for name, rule in checks:
        if (reason := rule(draft)) is not None:
            return Verdict(draft, name, reason)
    return Verdict(draft)
