"""The LangChain adapter over HybridRetriever: real embedder, real index of two squad2-dev PDFs."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from rag.answering.langchain_retriever import RagRetriever
from rag.runtime import Runtime

CANARY_QUESTION = "What continent are the Canarian Islands off the coast of?"  # squad2-dev: Normans.pdf, page 6


@pytest.fixture(scope="module")
def hybrid(small_index, embedder):
    with Runtime(small_index, embedder=embedder).start(with_generator=False) as runtime:
        yield runtime.retriever


def test_invoke_returns_documents_with_page_metadata(hybrid):
    retriever = RagRetriever(retriever=hybrid, top_k=5)
    assert isinstance(retriever, BaseRetriever)

    docs = retriever.invoke(CANARY_QUESTION)

    assert 1 <= len(docs) <= 5
    assert all(isinstance(d, Document) and d.page_content for d in docs)
    for d in docs:
        meta = d.metadata
        assert set(meta) == {"document", "page_start", "page_end", "chunk_id", "score", "dense_score"}
        assert 1 <= meta["page_start"] <= meta["page_end"]
        assert isinstance(meta["chunk_id"], int)
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    gold = [
        d for d in docs
        if d.metadata["document"] == "Normans.pdf" and d.metadata["page_start"] <= 6 <= d.metadata["page_end"]
    ]
    assert gold, [(d.metadata["document"], d.metadata["page_start"], d.metadata["page_end"]) for d in docs]
    assert any("Africa" in d.page_content for d in gold)


def test_top_k_defaults_to_settings_and_is_bounded(hybrid, small_index):
    docs = RagRetriever(retriever=hybrid).invoke("steam engine boiler pressure")
    assert len(docs) == small_index.retrieval.top_k
    assert docs[0].metadata["document"] == "Steam_engine.pdf"
    with pytest.raises(ValueError):
        RagRetriever(retriever=hybrid, top_k=0)


def test_async_invoke(hybrid):
    docs = asyncio.run(RagRetriever(retriever=hybrid, top_k=3).ainvoke(CANARY_QUESTION))
    assert len(docs) == 3
