"""Retrieval on a real set: the gold page is found for a clear majority of squad2-dev questions."""

from __future__ import annotations

import pytest

from rag.evaluation.dataset import load_qa
from rag.runtime import Runtime
from rag.answering.retrieval import reciprocal_rank_fusion
from tests.conftest import eval_set, ingest, make_settings


def test_reciprocal_rank_fusion_orders_by_summed_reciprocal_ranks():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert sorted(fused, key=fused.get, reverse=True) == [1, 3, 2]


@pytest.fixture(scope="module")
def squad_retriever(tmp_path_factory, embedder):
    settings = make_settings(tmp_path_factory.mktemp("squad") / "index")
    ingest(settings, eval_set("squad2-dev") / "docs", embedder)
    with Runtime(settings, embedder=embedder).start(with_generator=False) as runtime:
        yield {"hybrid": runtime.retriever}


def gold_in_top(retriever, items, k: int, mode: str) -> float:
    hits = 0
    for item in items:
        passages = retriever.retrieve(item.question, top_k=k, mode=mode)
        hits += any(
            p.chunk.document == item.doc and any(p.chunk.page_start <= g <= p.chunk.page_end for g in item.pages)
            for p in passages
        )
    return hits / len(items)


def test_gold_page_in_top10_for_a_clear_majority(squad_retriever, capsys):
    items = [q for q in load_qa(eval_set("squad2-dev") / "qa.jsonl") if q.answerable]
    retriever = squad_retriever["hybrid"]
    rates = {mode: gold_in_top(retriever, items, 10, mode) for mode in ("hybrid", "dense", "bm25")}
    with capsys.disabled():
        print(f"\nsquad2-dev answerable ({len(items)}): gold page in top 10: "
              + ", ".join(f"{m} {r:.3f}" for m, r in rates.items()))
    assert rates["hybrid"] >= 0.75
    assert rates["hybrid"] >= rates["dense"] - 0.02  # fusion must not lose to dense alone


def test_passages_carry_cosine_scores(squad_retriever):
    passages = squad_retriever["hybrid"].retrieve("What is a steam engine?", top_k=5)
    assert len(passages) == 5
    assert all(p.dense_score is not None and -1.0 <= p.dense_score <= 1.0 for p in passages)
    assert passages[0].chunk.document == "Steam_engine.pdf"
