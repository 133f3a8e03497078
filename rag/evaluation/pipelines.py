"""The pipelines an evaluation asks: ours in this process, ours over HTTP (the LangChain baseline is in
``rag.evaluation.baseline``). Each is a ``rag.evaluation.records.Pipeline``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rag.evaluation.evaluator import DEFAULT_TIMEOUT_S
from rag.evaluation.records import Retrieved
from rag.types import Answer, Citation, Quote

if TYPE_CHECKING:
    from rag.answering.service import AnswerService
    from rag.runtime import Runtime

RETRIEVE_K = 10  # passages kept for recall@k and MRR (k up to 10)
# Both gates open: every question is generated and scored, every answer from the evidence is kept with its
# confidence and features recorded.
OPEN_GATES = {"retrieval": {"min_relevance": -1.0}, "generation": {"min_confidence": 0.0}}


def open_gates(runtime: "Runtime") -> "Runtime":
    """A runtime sharing ``runtime``'s index and models with both gates open (min_relevance -1, min_confidence 0).

    Its answers keep their relevance, confidence and features recorded: the input ``rag.evaluation.sweep`` re-scores at
    other thresholds. Close it after use (it owns nothing, so this leaves ``runtime`` open).
    """
    if runtime.answers is None:
        raise ValueError("open_gates needs a Runtime started with its generator")
    return runtime.derive(OPEN_GATES)


class OursPipeline:
    """The grounded service in this process: ``runtime.answers`` (or the ``answers`` given).

    The retrieved list for recall@k is a separate ``retrieve(question, top_k=10)``: the service retrieves again
    inside ``answer`` (milliseconds, next to generation), and its top_k passages are a prefix of these 10.
    """

    def __init__(
        self, runtime: "Runtime", answers: "AnswerService | None" = None, *, name: str = "ours",
        top_k: int | None = None, max_new_tokens: int | None = None, retrieve_k: int = RETRIEVE_K,
    ):
        answers = answers or runtime.answers
        if answers is None or runtime.retriever is None:
            raise ValueError("OursPipeline needs a Runtime started with its generator (Runtime(settings).start())")
        self.name = name
        self.retriever = runtime.retriever
        self.answers = answers
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.retrieve_k = retrieve_k

    async def ask(self, question: str) -> tuple[Answer | None, list[Retrieved]]:
        passages = await asyncio.to_thread(self.retriever.retrieve, question, self.retrieve_k)
        retrieved = [(p.chunk.document, p.chunk.page_start, p.chunk.page_end) for p in passages]
        answer = await self.answers.answer(question, self.top_k, self.max_new_tokens)
        return answer, retrieved


class HttpPipeline:
    """The service over HTTP: POST {url}/v1/query. Its retrieved list is the answer's citations (an abstention's
    nearest passages).

    The server answers from its own index: ingest the set's docs/ into it first (``rag-ingest``).
    """

    def __init__(
        self, url: str, api_key: str | None = None, *, name: str = "ours", top_k: int | None = None,
        max_new_tokens: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, transport: Any = None,
    ):
        import httpx

        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.name = name
        self.url = url.rstrip("/")
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # transport: an httpx transport to use instead of the network (tests pass httpx.MockTransport)
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)

    async def ask(self, question: str) -> tuple[Answer | None, list[Retrieved]]:
        body: dict[str, Any] = {"question": question}
        if self.top_k is not None:
            body["top_k"] = self.top_k
        if self.max_new_tokens is not None:
            body["max_new_tokens"] = self.max_new_tokens
        response = await self._client.post("/v1/query", json=body)
        if response.is_error:
            raise RuntimeError(f"POST {self.url}/v1/query: HTTP {response.status_code}: {response.text[:300]}")
        answer = answer_from_json(response.json())
        # an abstention's passages are its nearest ones (citations are empty then)
        return answer, [(c.document, c.page_start, c.page_end) for c in answer.citations + answer.nearest]

    async def aclose(self) -> None:
        await self._client.aclose()


def answer_from_json(data: dict[str, Any]) -> Answer:
    """An ``Answer`` from a /v1/query response body."""
    def citations(field: str) -> tuple[Citation, ...]:
        return tuple(
            Citation(
                document=c["document"], page_start=int(c["pages"][0]), page_end=int(c["pages"][1]),
                snippet=c.get("snippet", ""), score=float(c.get("score", 0.0)), chunk_id=int(c.get("chunk_id", -1)),
            )
            for c in data.get(field) or []
        )

    return Answer(
        text=data["answer"], abstained=bool(data["abstained"]), citations=citations("citations"),
        nearest=citations("nearest"),
        timings=dict(data.get("timings") or {}), reason=data.get("reason"), support=data.get("support"),
        relevance=data.get("relevance"), confidence=data.get("confidence"), form=data.get("form"),
        quotes=tuple(
            Quote(text=q["text"], document=q["document"], page_start=int(q["pages"][0]), page_end=int(q["pages"][1]),
                  chunk_id=-1, score=float(q.get("score", 0.0)))
            for q in data.get("quotes", [])
        ),
    )
