"""The embedder's query and document paths: the model's own prompts when it has them, plain ``encode`` when not."""

from __future__ import annotations

import numpy as np
import pytest

from rag.indexing.embedding import SentenceTransformerEmbedder

QUESTION = "What company developed the most successful steam engine indicator?"
PASSAGE = "Charles Porter's indicator, made by Elliott Brothers of London, was the most successful."


def plain_encode(model, texts: list[str]) -> np.ndarray:
    """What embed_documents / embed_query did before they used the model's prompts."""
    return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


def test_minilm_vectors_are_the_plain_encode_vectors(embedder):
    """all-MiniLM-L6-v2 has no prompts: its query and document vectors are exactly what the index was built with."""
    assert not any(embedder.model.prompts.values())
    np.testing.assert_array_equal(embedder.embed_query(QUESTION), plain_encode(embedder.model, [QUESTION])[0])
    np.testing.assert_array_equal(embedder.embed_documents([PASSAGE]), plain_encode(embedder.model, [PASSAGE]))


@pytest.fixture
def prompted(embedder) -> SentenceTransformerEmbedder:
    """The same weights with e5-style prompts set, as an e5/bge model ships them in its config."""
    other = SentenceTransformerEmbedder(embedder.model_path, "cpu").load()
    other.model.prompts = {"query": "query: ", "document": "passage: "}
    return other


def test_a_model_with_prompts_gets_them(prompted):
    query = prompted.embed_query(QUESTION)
    np.testing.assert_allclose(query, plain_encode(prompted.model, ["query: " + QUESTION])[0], atol=1e-6)
    assert not np.allclose(query, plain_encode(prompted.model, [QUESTION])[0], atol=1e-3)
    [document] = prompted.embed_documents([PASSAGE])
    np.testing.assert_allclose(document, plain_encode(prompted.model, ["passage: " + PASSAGE])[0], atol=1e-6)
    assert np.linalg.norm(query) == pytest.approx(1.0, abs=1e-5)
