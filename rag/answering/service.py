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

from rag.answering.confidence import Calibrator, Generated, features, without_logprobs
from rag.answering.display import excerpt
from rag.answering.evidence import Evidence, quote_evidence
from rag.answering.finishing import finish, read_reply
from rag.answering.prompting import (
    ABSTAIN_TEXT, REPLY_PREFIX, AnswerForm, AnswerStream, answer_form, build_quote_messages,
)
from rag.answering.retrieval import HybridRetriever
from rag.answering.verification import lexical_support_text
from rag.settings import Settings
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
        form = answer_form(question)
        budget = max_new_tokens or self._token_budget(form)
        # Admission control first: a request the generator would refuse (503) is refused now, before seconds of
        # retrieval and evidence scoring on a CPU that the work ahead needs (in a burst those steps queue behind
        # each other); an admitted one holds its place meanwhile, so the requests after it count it as work ahead.
        admission = self.batcher.admit(budget, gen.request_timeout_s)
        try:
            passages = await asyncio.to_thread(self.retriever.retrieve, question, top_k)
            timings["retrieve_s"] = time.perf_counter() - started
            relevance = _relevance(passages)
            if not self._relevant_enough(relevance):
                timings["total_s"] = time.perf_counter() - started
                yield _abstain("no passage is relevant enough to the question", passages, Evidence((), ()),
                               relevance, timings)
                return
            evidence_started = time.perf_counter()
            evidence = await asyncio.to_thread(self._evidence, question, passages)
            timings["evidence_s"] = time.perf_counter() - evidence_started
            form, prompt, _ = self.build_prompt(question, evidence)
            result = None
            clean = AnswerStream()
            generate_started = time.perf_counter()
            async for item in self.batcher.stream(prompt, budget, gen.request_timeout_s, admission=admission):
                if isinstance(item, str):
                    if delta := clean.feed(item):
                        yield delta
                else:
                    result = item
        finally:
            if admission is not None:  # used up by stream; released here when it never got there (an abstention)
                admission.release()
        timings["generate_s"] = time.perf_counter() - generate_started
        answer = self._finish(question, form, passages, evidence, result, relevance, timings)
        answer.usage.update(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
        timings["total_s"] = time.perf_counter() - started
        yield answer

    def build_prompt(self, question: str, evidence: Evidence) -> tuple[AnswerForm, str, int]:
        """The answer form the question asks for, the rendered prompt over the quotes, and the form's token budget."""
        gen = self.settings.generation
        form = answer_form(question)
        messages = build_quote_messages(question, evidence.quotes, form, calculate=gen.calculations)
        prompt = self.llm.render_chat(messages) + REPLY_PREFIX
        return form, prompt, self._token_budget(form)

    def _token_budget(self, form: AnswerForm) -> int:
        """Tokens an answer of ``form`` may take: ``generation.max_new_tokens`` for sentences, the short one for spans."""
        gen = self.settings.generation
        return gen.max_new_tokens if form == "long" else gen.max_new_tokens_short

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
        """Turn generated text into a quoted, cited Answer, or an abstention when a check of
        ``rag.answering.finishing`` declines it (the generator declined, echoed the question, is unsure...)."""
        draft = read_reply(question, form, result.text, evidence.quotes)
        generated = Generated(
            text="" if draft.declined else draft.text, declined=draft.declined, token_logprobs=result.token_logprobs,
            probe_probability=result.probe_probability,
        )
        values = features(question, form, passages, evidence, generated, list(draft.used))
        if not result.logprobs_available:  # an external server that sent none: neutral values, marked as such
            values = without_logprobs(values, self.calibrator)
        confidence = None if self.calibrator is None else self.calibrator.confidence(values)
        verdict = finish(draft, confidence, self.min_confidence, calculate=self.settings.generation.calculations)
        done = verdict.draft
        support = lexical_support_text(draft.text, " ".join(q.text for q in draft.used), question) if (
            draft.used) else 0.0
        scores = dict(support=support, confidence=confidence, form=form, features=values)
        if verdict.reason is not None:
            draft_text = {"draft": draft.text} if verdict.keeps_draft else {}
            return _abstain(verdict.reason, passages, evidence, relevance, timings, **draft_text, **scores)
        cited = verdict.cited
        return Answer(
            text=done.presented, abstained=False, citations=tuple(quote_citation(q, done.presented) for q in cited),
            timings=timings, quotes=cited, relevance=relevance, unquoted_figures=done.unquoted,
            calculation=done.calculation.as_figure() if done.calculation else None,
            calculation_refused=done.calculation_refused, **scores,
        )


def _relevance(passages: list[Passage]) -> float | None:
    """The best passage's cosine similarity to the question (None when no passage has a dense score)."""
    return max((p.dense_score for p in passages if p.dense_score is not None), default=None)


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
    """Up to SNIPPET_CHARS of ``text``: whole sentences around the one holding the answer, cuts marked "…"."""
    return excerpt(text, answer, SNIPPET_CHARS)
