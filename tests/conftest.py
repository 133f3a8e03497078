"""Shared fixtures: real PDFs, a small real index, and one loaded Runtime per test session.

The real models load once per session (the embedder in seconds; the generator from its converted cache,
which the first run on a machine creates in about a minute).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rag.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EVAL_ROOT = REPO.parent / "shared" / "eval"
SAMPLE_DOCS = REPO / "samples" / "docs"
# Two squad2-dev articles: small enough to embed in seconds, real enough to answer questions about.
SMALL_CORPUS = ("Normans.pdf", "Steam_engine.pdf")


def eval_set(name: str) -> Path:
    """Path of a shared eval set; skips the test when ../shared/eval is absent."""
    root = EVAL_ROOT / name
    if not root.exists():
        pytest.skip(f"{root} not present")
    return root


def make_settings(index_dir: Path, **overrides) -> Settings:
    """Settings for tests: the index in ``index_dir``, one worker, no progress output."""
    settings = Settings()
    settings.index.path = index_dir
    settings.ingest.workers = 1
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        setattr(getattr(settings, section), field, value)
    return settings


@pytest.fixture(scope="session")
def small_docs(tmp_path_factory) -> Path:
    """A folder with copies of two squad2-dev PDFs."""
    folder = tmp_path_factory.mktemp("small_docs")
    for name in SMALL_CORPUS:
        shutil.copy(eval_set("squad2-dev") / "docs" / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def embedder_bundle():
    """(loaded embedder, its path), once per session."""
    from rag.runtime import load_embedder

    return load_embedder(Settings())


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, small_docs, embedder_bundle) -> Settings:
    """Settings pointing at a real index of ``small_docs`` (real embedder, real FAISS, real SQLite)."""
    from rag.runtime import make_ingestor
    from rag.indexing.index import DocumentIndex

    settings = make_settings(tmp_path_factory.mktemp("small_index") / "index")
    index = DocumentIndex.open(settings.index.path, settings.index, create=True)
    with index.writing():
        make_ingestor(settings, *embedder_bundle).sync_folder(index, small_docs)
    index.close()
    return settings


@pytest.fixture(scope="session")
def runtime(small_index):
    """A started Runtime (embedder, index, generator, batcher, pipeline) over the small index."""
    from rag.runtime import Runtime

    rt = Runtime(small_index).start()
    yield rt
    rt.close()
