"""Grounded answering: retrieve, gate on relevance, generate with numbered passages, verify, cite or abstain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from rag.answering.prompting import (
    ABSTAIN_TEXT, AnswerStream, answer_text, build_messages, cited_numbers, fit_passages, is_abstention,
)
from rag.answering.retrieval import HybridRetriever
from rag.settings import Settings
from rag.types import Answer, Citation, Passage
from rag.answering.verification import Verifier, attribute

if TYPE_CHECKING:
    from rag.answering.batching import BatchingGenerator
    from rag.answering.generation import TransformersGenerator

SNIPPET_CHARS = 300


class AnswerService:
    """The question-answering pipeline shared by the API and the evals."""

    def __init__(
        self, retriever: HybridRetriever, llm: "TransformersGenerator", batcher: "BatchingGenerator",
        verifier: Verifier, settings: Settings,
    ):
        self.retriever = retriever
        self.llm = llm
        self.batcher = batcher
        self.verifier = verifier
        self.settings = settings

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
        """Text deltas as they are generated, then the Answer, which is authoritative: verification may turn
        a streamed draft into an abstention."""
        gen = self.settings.generation
        timings: dict[str, float] = {}
        started = time.perf_counter()
        passages = await asyncio.to_thread(self.retriever.retrieve, question, top_k)
        timings["retrieve_s"] = time.perf_counter() - started
        relevance = max((p.dense_score for p in passages if p.dense_score is not None), default=None)
        if relevance is None or relevance < self.settings.retrieval.min_relevance:
            timings["total_s"] = time.perf_counter() - started
            yield self._abstain("no passage is relevant enough to the question", passages[:3], relevance, timings)
            return
        passages = fit_passages(question, passages, self.llm.count_tokens, gen.max_context_tokens)
        prompt = self.llm.render_chat(build_messages(question, passages))
        result = None
        clean = AnswerStream()
        generate_started = time.perf_counter()
        async for item in self.batcher.stream(prompt, max_new_tokens or gen.max_new_tokens, gen.request_timeout_s):
            if isinstance(item, str):
                if delta := clean.feed(item):
                    yield delta
            else:
                result = item
        timings["generate_s"] = time.perf_counter() - generate_started
        verify_started = time.perf_counter()
        answer = await asyncio.to_thread(self._finish, question, passages, result.text, relevance, timings)
        answer.usage.update(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
        timings["verify_s"] = time.perf_counter() - verify_started
        timings["total_s"] = time.perf_counter() - started
        yield answer

    def _finish(
        self, question: str, passages: list[Passage], raw: str, relevance: float, timings: dict[str, float]
    ) -> Answer:
        """Turn generated text into a cited Answer, or an abstention when it declines or is unsupported."""
        if is_abstention(raw) or not answer_text(raw):
            return self._abstain("the generator found no answer in the passages", passages[:3], relevance, timings)
        text = answer_text(raw)
        used = [passages[n - 1] for n in attribute(text, passages, cited_numbers(raw, len(passages)))]
        support = self.verifier.support(question, text, used)
        if not used or support < self.settings.generation.min_support:
            evidence = used or passages[:3]
            return self._abstain(
                f"the answer is not supported by the passages (support {support:.2f})", evidence, relevance,
                timings, support=support, draft=text,
            )
        return Answer(
            text=text, abstained=False, citations=tuple(citation(p, text) for p in used), timings=timings,
            support=support, relevance=relevance,
        )

    @staticmethod
    def _abstain(
        reason: str, evidence: list[Passage], relevance: float | None, timings: dict[str, float],
        support: float | None = None, draft: str | None = None,
    ) -> Answer:
        return Answer(
            text=ABSTAIN_TEXT, abstained=True, citations=tuple(citation(p) for p in evidence), timings=timings,
            reason=reason, support=support, relevance=relevance, draft=draft,
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
