"""The Ray engine on a local Ray instance (2 CPUs): same chunks, vectors, failures and index as the local engine.

Real PDFs (two squad2-dev articles, a 46-page 10-Q split into 8-page ranges), broken files, the real embedder,
FAISS and SQLite. Skipped where Ray is not installed (pip install -e ".[ray]"; the dev extra includes it).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from rag.errors import UsageError
from rag.indexing.index import DocumentIndex
from rag.ingestion.ingestor import KNOWN_FAILURE_NOTE
from rag.ingestion.ocr import INSTALL_HINT, tesseract_version
from tests import pdf_factory
from tests.conftest import eval_set, ingest, make_settings

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")

PAGES_PER_TASK = 8  # the 46-page filing becomes 6 ranges, read by separate Ray tasks


@pytest.fixture(scope="module")
def local_ray():
    """One private Ray instance for the module, as rag-ingest would start it (the rag package shipped)."""
    from rag.ingestion.ray_engine import start_ray

    started = start_ray(make_settings(Path("unused")), num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    docs = tmp_path_factory.mktemp("ray_docs")
    squad = eval_set("squad2-dev") / "docs"
    shutil.copy(squad / "Normans.pdf", docs / "Normans.pdf")
    (docs / "sub").mkdir()
    shutil.copy(squad / "Steam_engine.pdf", docs / "sub" / "Steam_engine.pdf")
    shutil.copy(eval_set("sec10q-dev") / "docs" / "2023 Q1 AAPL.pdf", docs / "aapl.pdf")
    pdf_factory.not_a_pdf(docs / "html.pdf")
    pdf_factory.truncated_pdf(docs / "cut.pdf", squad / "Normans.pdf")
    # Long enough to be split into ranges: every page fails (across ranges), or no page has text.
    pdf_factory.broken_page_pdf(docs / "dead.pdf", [f"page {i}" for i in range(1, 11)], set(range(1, 11)))
    pdf_factory.image_only_pdf(docs / "scan.pdf", pages=10)
    return docs


def _contents(settings, probe: str | None = "aapl.pdf") -> tuple[dict, dict, dict]:
    """(documents, chunks without ids, vectors) per document name, in position order."""
    index = DocumentIndex.open(settings.index.path, settings.index)
    try:
        assert index.vectors.ntotal == index.store.count_chunks()
        documents = {
            name: (r.content_hash, r.pages, r.chunks, r.size_bytes, r.collection)
            for name, r in index.store.documents().items()
        }
        chunks: dict[str, list] = {}
        ids: dict[str, list[int]] = {}
        for chunk in index.store.all_chunks():
            chunks.setdefault(chunk.document, []).append(
                (chunk.position, chunk.page_start, chunk.page_end, chunk.char_start, chunk.char_end,
                 chunk.content_hash, chunk.text)
            )
            ids.setdefault(chunk.document, []).append(chunk.id)
        vectors = {}
        for name, chunk_ids in ids.items():
            found = index.store.vectors_by_ids(chunk_ids, index.profile.dim)
            vectors[name] = np.stack([found[i] for i in chunk_ids])
        # The FAISS file answers for the stored vectors: a chunk's own vector finds it first.
        if probe is not None:
            first = ids[probe][3]
            assert index.search(vectors[probe][3], 1)[0][0] == first
        return documents, chunks, vectors
    finally:
        index.close()


def test_same_index_on_both_engines(tmp_path, corpus, embedder, local_ray):
    # Table rows on (ingest.tables "rows"): aapl.pdf's statements are read twice, on either engine.
    local = make_settings(tmp_path / "local", ingest__pages_per_task=PAGES_PER_TASK, ingest__tables="rows")
    on_ray = make_settings(tmp_path / "ray", ingest__pages_per_task=PAGES_PER_TASK, ingest__engine="ray",
                           ingest__tables="rows")

    expected = ingest(local, corpus, embedder)
    report = ingest(on_ray, corpus, embedder)
    assert report.table_pages == expected.table_pages > 0

    failures = {f.path: f.reason for f in report.failed}
    assert failures == {f.path: f.reason for f in expected.failed}  # reported exactly as locally
    assert set(failures) == {"html.pdf", "cut.pdf", "dead.pdf", "scan.pdf"}
    assert "text extraction failed on every page" in failures["dead.pdf"]
    assert "no text layer" in failures["scan.pdf"]
    assert (report.new, report.pages, report.chunks_added) == (expected.new, expected.pages, expected.chunks_added)
    assert "ray_pipeline" in report.stage_seconds and "index" in report.stage_seconds

    documents, chunks, vectors = _contents(on_ray)
    want_documents, want_chunks, want_vectors = _contents(local)
    assert set(documents) == {"Normans.pdf", "sub/Steam_engine.pdf", "aapl.pdf"}
    assert documents == want_documents  # hash, pages, chunk count, size, collection
    assert chunks == want_chunks  # text, pages, offsets, hashes, positions
    assert chunks["aapl.pdf"][-1][2] == 46  # the last range's pages made it in
    for name, vecs in vectors.items():
        np.testing.assert_allclose(vecs, want_vectors[name], atol=1e-5)

    # A rerun on Ray: the stored files are unchanged, the bad ones (never stored, remembered by content hash)
    # are reported again without being parsed, and counted neither as new nor as changed.
    again = ingest(on_ray, corpus, embedder)
    assert (again.new, again.changed, again.unchanged, again.chunks_added) == (0, 0, 3, 0)
    assert {f.path for f in again.failed} == set(failures)
    assert all(f.reason.endswith(KNOWN_FAILURE_NOTE) for f in again.failed)
    rewritten = tmp_path / "docs"
    shutil.copytree(corpus, rewritten)
    pdf_factory.not_a_pdf(rewritten / "Normans.pdf")
    third = ingest(on_ray, rewritten, embedder)
    # Normans.pdf changed into a bad file: reported, its old chunks removed, and not counted as changed.
    assert third.changed == 0 and [f.path for f in third.failed if f.path == "Normans.pdf"] == ["Normans.pdf"]
    assert third.chunks_removed == len(want_chunks["Normans.pdf"]) and third.chunks_added == 0
    documents, chunks, _ = _contents(on_ray)
    assert set(documents) == {"sub/Steam_engine.pdf", "aapl.pdf"}
    assert chunks["aapl.pdf"] == want_chunks["aapl.pdf"]


needs_tesseract = pytest.mark.skipif(
    tesseract_version() is None, reason=f"Tesseract is not installed ({INSTALL_HINT})"
)


@needs_tesseract
def test_a_scan_split_into_ranges_gives_the_same_chunks_on_both_engines(tmp_path, embedder, local_ray):
    """A real scan (three pages of Steam_engine.pdf as images) read by OCR in two ranges (pages 1-2, page 3),
    on separate Ray tasks: the same OCR'd pages, chunks and page numbers as the local engine."""
    docs = tmp_path / "scans"
    docs.mkdir()
    pdf_factory.image_only_copy(eval_set("squad2-dev") / "docs" / "Steam_engine.pdf", docs / "steam_scan.pdf",
                                [1, 2, 3])
    local = make_settings(tmp_path / "local", ingest__pages_per_task=2, ingest__ocr="on")
    on_ray = make_settings(tmp_path / "ray", ingest__pages_per_task=2, ingest__ocr="on", ingest__engine="ray")

    expected = ingest(local, docs, embedder)
    report = ingest(on_ray, docs, embedder)

    assert report.failed == expected.failed == []
    assert (report.ocr_pages, report.pages) == (expected.ocr_pages, expected.pages) == (3, 3)
    _, chunks, _ = _contents(on_ray, probe=None)
    _, want_chunks, _ = _contents(local, probe=None)
    assert chunks == want_chunks  # text, pages, offsets, hashes, positions
    assert {c[1] for c in chunks["steam_scan.pdf"]} | {c[2] for c in chunks["steam_scan.pdf"]} == {1, 2, 3}
    assert any("Charles Porter" in c[6] and c[1] <= 3 <= c[2] for c in chunks["steam_scan.pdf"])


def test_actors_that_would_take_every_cpu_are_refused(tmp_path, corpus, embedder, local_ray):
    settings = make_settings(tmp_path / "index", ingest__engine="ray", ingest__ray_embed_cpus=2.0)
    with pytest.raises(UsageError, match="leaving none to parse"):
        ingest(settings, corpus, embedder)


def test_missing_ray_names_the_extra(monkeypatch):
    from rag.ingestion import ray_engine

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(UsageError, match=r"pip install -e '\.\[ray\]'"):
        ray_engine.import_ray()


def test_cli_ray_address_needs_the_ray_engine(tmp_path):
    from ingest.cli import main

    (tmp_path / "docs").mkdir()
    pdf_factory.text_pdf(tmp_path / "docs" / "a.pdf", ["some text"])
    assert main([str(tmp_path / "docs"), "--index", str(tmp_path / "index"), "--ray-address", "auto"]) == 2
    assert not (tmp_path / "index").exists()


@pytest.mark.slow
def test_cli_engine_ray_end_to_end(tmp_path):
    """rag-ingest --engine ray in its own process: a private Ray instance, the report and exit code as locally."""
    import json
    import subprocess

    from tests.conftest import REPO

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(eval_set("squad2-dev") / "docs" / "Normans.pdf", docs / "Normans.pdf")
    pdf_factory.not_a_pdf(docs / "bad.pdf")
    run = subprocess.run(
        [sys.executable, "-m", "ingest.cli", str(docs), "--index", str(tmp_path / "index"), "--engine", "ray",
         "--workers", "2", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 1, run.stderr  # some files failed, the rest ingested
    report = json.loads(run.stdout)
    assert report["new"] == 1 and [f["path"] for f in report["failed"]] == ["bad.pdf"]  # failures are not new
    assert report["chunks_total"] > 0 and "ray_pipeline" in report["stage_seconds"]
