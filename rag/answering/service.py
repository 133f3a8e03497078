"""Grounded answering, evidence first: retrieve, pick the sentences that answer, generate from those quotes,
score the answer's confidence, and answer with its quotes and pages or abstain.

    passages -> evidence sentences (rag.answering.evidence) -> prompt for the answer form (short span or
    sentences, rag.answering.prompting) -> generation with token log-probabilities -> features ->
    calibrated confidence (rag.answering.confidence) -> Answer (quotes, citations, confidence) or abstention
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from rag.answering.confidence import Calibrator, Generated, answer_in_evidence, features, without_logprobs
from rag.answering.evidence import Evidence, quote_evidence
from rag.answering.prompting import (
    ABSTAIN_TEXT, REPLY_PREFIX, AnswerForm, AnswerStream, answer_form, answer_text, build_quote_messages, cited_numbers,
    is_abstention, present,
)
from rag.answering.retrieval import HybridRetriever
from rag.answering.verification import lexical_support_text, restates_question, unquoted_figures
from rag.settings import Settings
from rag.text import normalize_answer
from rag.types import Answer, Citation, Passage, Quote

if TYPE_CHECKING:
    from rag.generation.batching import BatchingGenerator
    from rag.generation.base import GenerationResult, Generator

SNIPPET_CHARS = 300


class AnswerService:
    """The question-answering pipeline shared by the API and the evals.

    ``calibrator`` turns features into a confidence; without one, every answer the generator gives is kept
    (the set-up used to collect features for fitting one). ``min_confidence`` overrides its threshold.
    """

    def __init__(
        self, retriever: HybridRetriever, llm: "Generator", batcher: "BatchingGenerator",
        settings: Settings, calibrator: Calibrator | None = None,
    ):
        self.retriever = retriever
        self.llm = llm
        self.batcher = batcher
        self.settings = settings
        self.calibrator = calibrator

    @property
    def min_confidence(self) -> float:
        configured = self.settings.generation.min_confidence
        if configured is not None:
            return configured
        return self.calibrator.threshold if self.calibrator is not None else 0.0

    async def answer(self, question: str, top_k: int | None = None, max_new_tokens: int | None = None) -> Answer:
        """The final Answer (no streaming)."""
        final = None
        async for event in self.stream(question, top_k, max_new_tokens):
            final = event
        assert isinstance(final, Answer)
        return final

    async def stream(
        self, question: str, top_k: int | None = None, max_new_tokens: int | None = None
    ) -> AsyncIterator[str | Answer]:
        """Text deltas as they are generated, then the Answer, which is authoritative: a low confidence may
        turn a streamed draft into an abstention."""
        gen = self.settings.generation
        timings: dict[str, float] = {}
        started = time.perf_counter()
        passages = await asyncio.to_thread(self.retriever.retrieve, question, top_k)
        timings["retrieve_s"] = time.perf_counter() - started
        relevance = _relevance(passages)
        if not self._relevant_enough(relevance):
            timings["total_s"] = time.perf_counter() - started
            yield _abstain("no passage is relevant enough to the question", passages, Evidence((), ()), relevance,
                           timings)
            return
        # Admission control before the costly evidence scoring: a request the generator would refuse (503) is
        # refused now, not after seconds of embedding sentences on a CPU that the work ahead needs.
        self.batcher.check_admission(gen.request_timeout_s)
        evidence_started = time.perf_counter()
        evidence = await asyncio.to_thread(self._evidence, question, passages)
        timings["evidence_s"] = time.perf_counter() - evidence_started
        form, prompt, budget = self.build_prompt(question, evidence)
        budget = max_new_tokens or budget
        result = None
        clean = AnswerStream()
        generate_started = time.perf_counter()
        async for item in self.batcher.stream(prompt, budget, gen.request_timeout_s):
            if isinstance(item, str):
                if delta := clean.feed(item):
                    yield delta
            else:
                result = item
        timings["generate_s"] = time.perf_counter() - generate_started
        answer = self._finish(question, form, passages, evidence, result, relevance, timings)
        answer.usage.update(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
        timings["total_s"] = time.perf_counter() - started
        yield answer

    def build_prompt(self, question: str, evidence: Evidence) -> tuple[AnswerForm, str, int]:
        """The answer form the question asks for, the rendered prompt over the quotes, and the form's token budget."""
        gen = self.settings.generation
        form = answer_form(question)
        prompt = self.llm.render_chat(build_quote_messages(question, evidence.quotes, form)) + REPLY_PREFIX
        return form, prompt, gen.max_new_tokens if form == "long" else gen.max_new_tokens_short

    def prepare(self, question: str, top_k: int | None = None) -> tuple[AnswerForm, str, int] | None:
        """``build_prompt`` for a question, retrieved and quoted as ``stream`` does; None where the relevance gate
        abstains without generating (benchmarks compare engines on the service's real prompts with it)."""
        passages = self.retriever.retrieve(question, top_k)
        if not self._relevant_enough(_relevance(passages)):
            return None
        return self.build_prompt(question, self._evidence(question, passages))

    def _relevant_enough(self, relevance: float | None) -> bool:
        """The relevance gate: below ``retrieval.min_relevance`` the question is abstained on without generating."""
        return relevance is not None and relevance >= self.settings.retrieval.min_relevance

    def _evidence(self, question: str, passages: list[Passage]) -> Evidence:
        return quote_evidence(question, passages, self.retriever.embedder, self.llm.count_tokens,
                              self.settings.generation, named=self.retriever.report_documents(question))

    def _finish(
        self, question: str, form: str, passages: list[Passage], evidence: Evidence, result: "GenerationResult",
        relevance: float, timings: dict[str, float],
    ) -> Answer:
        """Turn generated text into a quoted, cited Answer, or an abstention when it declines or is unsure."""
        raw = result.text
        text = answer_text(raw)
        declined = is_abstention(raw) or not text
        # A span made only of the question's own words ("Savery" to "Who improved the Savery pump?") is what the
        # model writes when the quotes hold no answer: treated as declining, whatever its confidence.
        echoed = not declined and form == "short" and restates_question(text, question)
        declined = declined or echoed
        quotes = list(evidence.quotes)
        used = _answer_quotes(text, quotes, cited_numbers(raw, len(quotes)))
        generated = Generated(
            text="" if declined else text, declined=declined, token_logprobs=result.token_logprobs,
            probe_probability=result.probe_probability,
        )
        values = features(question, form, passages, evidence, generated, used)
        if not result.logprobs_available:  # an external server that sent none: neutral values, marked as such
            values = without_logprobs(values, self.calibrator)
        confidence = None if self.calibrator is None else self.calibrator.confidence(values)
        support = lexical_support_text(text, " ".join(q.text for q in used), question) if used else 0.0
        scores = dict(support=support, confidence=confidence, form=form, features=values)
        if echoed:
            return _abstain("the answer only repeats the question's words", passages, evidence, relevance, timings,
                            draft=text, **scores)
        final = present(question, form, text, used) if used else text
        # A span is checked against the quotes that hold it; sentences, written from every quote shown (and cited
        # with them all, below), against every quote.
        checked = used if form == "short" else quotes
        missing = unquoted_figures(final, [q.text for q in checked], question) if used and not declined else ()
        if form == "short" and missing:
            # "How many stories does the Lavietes Pavilion have?" -> "2", no 2 (or "two") in the quotes: in the
            # dev sets' recorded answers every such span (3 on squad2-dev) was wrong.
            return _abstain("the answer's figure is not in the quotes", passages, evidence, relevance, timings,
                            draft=text, **scores)
        if declined:
            return _abstain("the generator found no answer in the quotes", passages, evidence, relevance, timings,
                            **scores)
        if not used:
            return _abstain("the answer is not in the quoted evidence", passages, evidence, relevance, timings,
                            draft=text, **scores)
        if confidence is not None and confidence < self.min_confidence:
            return _abstain(
                f"confidence {confidence:.2f} is below {self.min_confidence:.2f}", passages, evidence, relevance,
                timings, draft=text, **scores,
            )
        if form == "long":
            # Sentences are written from every quote the generator was shown: cite them all, the ones the answer
            # visibly rests on first (a span answer cites only the quotes that hold it).
            used = used + [q for q in quotes if q not in used]
        return Answer(
            text=final, abstained=False, citations=tuple(quote_citation(q, final) for q in used), timings=timings,
            quotes=tuple(used), relevance=relevance, unquoted_figures=missing, **scores,
        )


def _relevance(passages: list[Passage]) -> float | None:
    """The best passage's cosine similarity to the question (None when no passage has a dense score)."""
    return max((p.dense_score for p in passages if p.dense_score is not None), default=None)


def _answer_quotes(answer: str, quotes: list[Quote], cited: list[int]) -> list[Quote]:
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


def _abstain(
    reason: str, passages: list[Passage], evidence: Evidence, relevance: float | None, timings: dict[str, float],
    **extra,
) -> Answer:
    """An abstention, with the nearest evidence attached (labelled as such by clients, not as sources)."""
    nearest = evidence.quotes[:3]
    citations = tuple(quote_citation(q) for q in nearest) or tuple(citation(p) for p in passages[:3])
    return Answer(
        text=ABSTAIN_TEXT, abstained=True, citations=citations, timings=timings, reason=reason, relevance=relevance,
        quotes=tuple(nearest), **extra,
    )


def quote_citation(quote: Quote, answer: str = "") -> Citation:
    """A quote as a citation: its document, pages and text around the answer."""
    return Citation(
        document=quote.document, page_start=quote.page_start, page_end=quote.page_end,
        snippet=snippet(quote.text, answer), score=round(float(quote.score), 4), chunk_id=quote.chunk_id,
    )


def citation(passage: Passage, answer: str = "") -> Citation:
    """A passage as a citation; the score is its cosine similarity to the question when known."""
    c = passage.chunk
    score = passage.dense_score if passage.dense_score is not None else passage.score
    return Citation(
        document=c.document, page_start=c.page_start, page_end=c.page_end,
        snippet=snippet(c.text, answer), score=round(float(score), 4), chunk_id=int(c.id),
    )


def snippet(text: str, answer: str = "") -> str:
    """Up to SNIPPET_CHARS of ``text``: around the answer where the passage contains it, else its start."""
    at = text.lower().find(answer.lower().strip(" .")) if answer.strip(" .") else -1
    if at < 0 or len(text) <= SNIPPET_CHARS:
        return text[:SNIPPET_CHARS]
    start = max(0, min(at - SNIPPET_CHARS // 3, len(text) - SNIPPET_CHARS))
    return text[start:start + SNIPPET_CHARS]
