"""Shared fixtures: real PDFs, a small real index, and one loaded Runtime per test session.

The real models load once per session (the embedder in seconds; the generator from its converted cache,
which the first run on a machine creates in about a minute). Every test that uses them is marked ``models``
here, so ``-m "not models"`` is the tier without model weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rag.settings import Settings
from rag.types import IngestReport

REPO = Path(__file__).resolve().parents[1]
EVAL_ROOT = REPO.parent / "shared" / "eval"
SAMPLE_DOCS = REPO / "samples" / "docs"  # the bundled sample: SMALL_CORPUS, shipped with the repository
# Two squad2-dev articles: small enough to embed in seconds, real enough to answer questions about.
SMALL_CORPUS = ("Normans.pdf", "Steam_engine.pdf")
# Fixtures that load the real embedder or generator: a test that uses one (directly or not) is marked ``models``,
# and so is every e2e test (they run the real pipeline).
MODEL_FIXTURES = {
    "embedder", "small_index", "runtime", "client", "model_path", "generator", "generator_cache", "tokenizer_path",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.models)


def eval_set(name: str) -> Path:
    """Path of a shared eval set; skips the test when ../shared/eval is absent."""
    root = EVAL_ROOT / name
    if not root.exists():
        pytest.skip(f"{root} not present")
    return root


def squad_doc(name: str) -> Path:
    """A squad2-dev PDF: from the bundled samples/docs when it is there, else from ../shared/eval (or skip)."""
    bundled = SAMPLE_DOCS / name
    return bundled if bundled.is_file() else eval_set("squad2-dev") / "docs" / name


def make_settings(index_dir: Path, **overrides) -> Settings:
    """Settings for tests: the index in ``index_dir``, one worker; ``overrides`` as ``section__field=value``.

    Built through ``Settings.with_overrides``, so every value is validated as a real configuration is. OCR is off
    (``ingest.ocr`` "auto" depends on whether the machine has Tesseract): tests of it turn it on themselves."""
    nested: dict[str, dict] = {"index": {"path": index_dir}, "ingest": {"workers": 1, "ocr": "off"}}
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        nested.setdefault(section, {})[field] = value
    return Settings().with_overrides(nested)


def ingest(settings: Settings, docs: Path, embedder, rebuild: bool = False) -> IngestReport:
    """What rag-ingest does (``Runtime.start_ingest`` then ``documents.sync_folder``), with the session's
    loaded embedder."""
    from rag.runtime import Runtime

    with Runtime(settings, embedder=embedder).start_ingest() as runtime:
        return runtime.documents.sync_folder(docs, rebuild=rebuild)


@pytest.fixture(scope="session")
def small_docs(tmp_path_factory) -> Path:
    """A folder with copies of the two PDFs of SMALL_CORPUS."""
    folder = tmp_path_factory.mktemp("small_docs")
    for name in SMALL_CORPUS:
        shutil.copy(squad_doc(name), folder / name)
    return folder


@pytest.fixture(scope="session")
def embedder():
    """The packaged embedder, loaded once per session."""
    from rag.runtime import build_embedder

    return build_embedder(Settings()).load()


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, small_docs, embedder) -> Settings:
    """Settings pointing at a real index of ``small_docs`` (real embedder, real FAISS, real SQLite)."""
    settings = make_settings(tmp_path_factory.mktemp("small_index") / "index")
    ingest(settings, small_docs, embedder)
    return settings


@pytest.fixture(scope="session")
def runtime(small_index, embedder):
    """A started Runtime (embedder, index, generator, batcher, services) over the small index."""
    from rag.runtime import Runtime

    with Runtime(small_index, embedder=embedder).start() as rt:
        yield rt
