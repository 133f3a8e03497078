"""The composition root: ``Runtime`` builds every part from Settings, and ``derive`` changes one part while
sharing the loaded models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rag.runtime import Runtime
from tests.conftest import eval_set


def test_derive_for_another_index_shares_the_models_and_closes_only_its_own(small_index, tmp_path):
    """A second set's runtime reuses the loaded models, has its own index, and closing it spares the base."""
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(eval_set("squad2-dev") / "docs" / "Normans.pdf", docs / "Normans.pdf")
    with Runtime(small_index).start(with_generator=False) as base:
        with base.derive({"index": {"path": tmp_path / "other-index"}}) as other:
            assert other.embedder is base.embedder and other.index is not base.index and other.answers is None
            assert other.settings.index.path == tmp_path / "other-index"
            assert other.documents.sync_folder(docs).new == 1
            passages = other.retriever.retrieve("What continent are the Canarian Islands off the coast of?", 10)
            assert passages and {p.chunk.document for p in passages} == {"Normans.pdf"}
        assert "Steam_engine.pdf" in {p.chunk.document for p in base.retriever.retrieve("steam engine boiler", 5)}


def test_derive_with_other_gates_shares_index_retriever_and_batcher(runtime):
    gates = runtime.derive({"retrieval": {"min_relevance": -1.0}, "generation": {"min_confidence": 0.0}})
    try:
        assert gates.index is runtime.index and gates.retriever is runtime.retriever
        assert gates.llm is runtime.llm and gates.batcher is runtime.batcher
        assert gates.answers is not runtime.answers and gates.answers.settings.retrieval.min_relevance == -1.0
        assert runtime.answers.settings.retrieval.min_relevance == runtime.settings.retrieval.min_relevance
    finally:
        gates.close()
    assert runtime.batcher.running and runtime.index.store.count_chunks() > 0  # nothing of the base was closed


def test_derive_with_other_batching_starts_its_own_batcher(runtime):
    with runtime.derive({"generation": {"queue_size": 3}}) as derived:
        assert derived.batcher is not runtime.batcher and derived.llm is runtime.llm
        assert derived.answers.batcher is derived.batcher
    assert not derived.batcher.running and runtime.batcher.running


def test_derive_validates_the_overrides(runtime):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        runtime.derive({"retrieval": {"top_k": 0}})
    with pytest.raises(KeyError, match="unknown setting"):
        runtime.derive({"retrieval": {"topk": 3}})
    with pytest.raises(ValueError, match="shares the models"):
        runtime.derive({"models": {"generator": "other"}})


def test_derive_refuses_an_index_built_with_another_embedder(small_index, embedder, tmp_path):
    """A derived runtime shares the loaded embedder, so another index must have been built with it."""
    import json
    import sqlite3

    from rag.indexing.index import STORE_FILE, IndexIncompatible

    foreign = tmp_path / "foreign"
    shutil.copytree(small_index.index.path, foreign)
    with sqlite3.connect(foreign / STORE_FILE) as db:
        profile = json.loads(db.execute("SELECT value FROM meta WHERE key = 'profile'").fetchone()[0])
        profile["embedder"] = "some/other-embedder"
        db.execute("UPDATE meta SET value = ? WHERE key = 'profile'", (json.dumps(profile, sort_keys=True),))
    with Runtime(small_index, embedder=embedder).start(with_generator=False) as base:
        with pytest.raises(IndexIncompatible, match="some/other-embedder"):
            base.derive({"index": {"path": foreign}})


def test_settings_refuse_a_short_answer_budget_above_the_request_limit():
    import pytest
    from pydantic import ValidationError

    from rag.settings import Settings

    with pytest.raises(ValidationError, match="max_new_tokens_short must not exceed"):
        Settings().with_overrides({"generation": {"max_new_tokens_short": 32, "max_new_tokens_limit": 16,
                                                  "max_new_tokens": 8}})
    ok = Settings().with_overrides({"generation": {"max_new_tokens_short": 4, "max_new_tokens_limit": 4,
                                                   "max_new_tokens": 4}})
    assert ok.generation.max_new_tokens_limit == 4


def test_the_ingestion_stage_imports_nothing_of_answering_or_generation():
    """What a Ray worker (or a parse worker) imports to ingest stays out of the answering and generation stages:
    no answer service, generator or torch is loaded onto it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import rag.ingestion.ray_engine, rag.ingestion.ingestor, rag.ingestion.parse_pool, rag.ingestion.documents\n"
        "print(sorted(m for m in sys.modules if m.startswith(('rag.answering', 'rag.generation', 'rag.evaluation'))"
        " or m in ('torch', 'transformers', 'ctranslate2')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
