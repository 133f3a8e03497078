"""One contract for every index kind; approximate search checked against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from rag.settings import IndexSettings
from rag.indexing.vector_index import VectorIndex, choose_kind, gpu_count

DIM = 32


def unit_vectors(n: int, seed: int) -> np.ndarray:
    """(n, DIM) unit vectors around 40 topics, like embeddings of a corpus (uniform noise is IVF's worst case)."""
    rng = np.random.default_rng(seed)
    topics = np.random.default_rng(1234).standard_normal((40, DIM)).astype(np.float32)
    v = topics[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(kind: str, n: int = 4000, **overrides) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    settings = IndexSettings(kind=kind, use_gpu="never", **overrides)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    vectors = unit_vectors(n, seed=1)
    return VectorIndex.build(ids, vectors, settings, DIM), ids, vectors


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_contract(kind, tmp_path):
    index, ids, vectors = build(kind)
    assert index.kind == kind and index.ntotal == len(ids)
    scores, found = index.search(vectors[:5], 3)
    assert found.shape == (5, 3) and list(found[:, 0]) == list(ids[:5])  # each vector finds itself
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4)  # unit vectors: inner product is cosine
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first

    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss", IndexSettings(kind=kind, use_gpu="never"))
    assert loaded.kind == kind and loaded.ntotal == index.ntotal
    assert np.array_equal(loaded.search(vectors[:5], 3)[1], found)

    extra = unit_vectors(2, seed=9)
    index.add(np.array([7, 8]), extra)
    assert index.search(extra, 1)[1][:, 0].tolist() == [7, 8]
    if index.supports_remove:
        assert index.remove(np.array([7, 1000])) == 2
        assert 1000 not in index.search(vectors[:1], 5)[1][0]
    else:
        with pytest.raises(NotImplementedError):
            index.remove(np.array([7]))


@pytest.mark.parametrize("kind,floor", [("ivf", 0.9), ("hnsw", 0.95)])
def test_approximate_recall_against_exact(kind, floor):
    exact, _, vectors = build("flat", n=6000)
    approx, _, _ = build(kind, n=6000)
    queries = unit_vectors(200, seed=5)
    truth = exact.search(queries, 10)[1]
    got = approx.search(queries, 10)[1]
    recall = np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, got)])
    assert recall >= floor, f"{kind} recall@10 {recall:.3f}"


def test_auto_kind_and_small_ivf_fallback():
    settings = IndexSettings(kind="auto", auto_threshold=100)
    assert choose_kind(settings, 100) == "flat" and choose_kind(settings, 101) == "ivf"
    index, _, _ = build("ivf", n=50)  # too few vectors to train lists: exact search instead
    assert index.kind == "flat"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="dim"):
        VectorIndex(0, IndexSettings())
    with pytest.raises(ValueError, match="unknown index kind"):
        VectorIndex(8, IndexSettings(), kind="lsh")
    index, _, _ = build("flat", n=10)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([1, 2]), unit_vectors(3, seed=0))


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="needs faiss-gpu and a CUDA GPU")
def test_gpu_search_matches_cpu():
    settings = IndexSettings(kind="flat", use_gpu="auto")
    ids = np.arange(5000, dtype=np.int64)
    vectors = unit_vectors(5000, seed=2)
    index = VectorIndex.build(ids, vectors, settings, DIM)
    cpu = build("flat", n=5000)[0]
    got = index.search(vectors[:50], 10)[1]
    assert index.on_gpu
    assert np.mean(got[:, 0] == cpu.search(vectors[:50], 10)[1][:, 0]) == 1.0
