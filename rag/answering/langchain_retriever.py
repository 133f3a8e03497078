"""A LangChain adapter over our retriever: LangChain types stay in this module.

    retriever = RagRetriever(retriever=runtime.retriever, top_k=5)
    docs = retriever.invoke("What continent are the Canarian Islands off the coast of?")
    docs[0].metadata  # {"document": "Normans.pdf", "page_start": 6, "page_end": 6, "chunk_id": ..., ...}
"""

from __future__ import annotations

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field

from rag.answering.retrieval import HybridRetriever
from rag.types import Passage


class RagRetriever(BaseRetriever):
    """``HybridRetriever`` as a LangChain ``BaseRetriever``: one Document per passage, best first.

    ``page_content`` is the chunk text; ``metadata`` has ``document``, ``page_start``, ``page_end``
    (1-based), ``chunk_id``, ``score`` (the fused ranking score) and ``dense_score`` (cosine similarity
    to the query, or None).
    """

    retriever: HybridRetriever
    top_k: int | None = Field(None, ge=1, le=50, description="Passages per query; None takes retrieval.top_k.")

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [to_document(p) for p in self.retriever.retrieve(query, self.top_k)]


def to_document(passage: Passage) -> Document:
    """A retrieved passage as a LangChain Document."""
    chunk = passage.chunk
    return Document(
        page_content=chunk.text,
        metadata={
            "document": chunk.document,
            "page_start": chunk.page_start,
            "page_end": chunk.page_end,
            "chunk_id": chunk.id,
            "score": passage.score,
            "dense_score": passage.dense_score,
        },
    )
