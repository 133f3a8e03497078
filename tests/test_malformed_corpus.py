"""The ingest campaign's malformed corpus (tests/malformed_corpus.py): 0 crashes, 0 hangs, every bad entry
reported with its reason, every good file ingested; then reruns, rebuilds and uploads around it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from rag.indexing.index import DocumentIndex
from rag.ingestion.ingestor import KNOWN_FAILURE_NOTE, UPLOAD_PREFIX, upload_dir
from rag.runtime import build_ingestor
from tests import malformed_corpus, pdf_factory
from tests.conftest import REPO, eval_set, ingest, make_settings

GOOD = "Pelton_wheel.pdf"  # a short clapnq-dev article (15 KB): 13 copies embed in seconds


def stored(settings) -> dict[str, str]:
    """Stored document name -> collection; also checks FAISS and the store agree."""
    index = DocumentIndex.open(settings.index.path, settings.index)
    try:
        assert index.vectors.ntotal == index.store.count_chunks()
        return {name: record.collection for name, record in index.store.documents().items()}
    finally:
        index.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("malformed") / "docs"
    built = malformed_corpus.build(folder, eval_set("clapnq-dev") / "docs" / GOOD)
    assert built.kinds >= 35 and len(built.bad) >= 30
    return folder, built


def test_cli_reports_every_bad_entry_and_ingests_every_good_file(corpus, tmp_path):
    folder, built = corpus
    index_dir = tmp_path / "index"
    run = subprocess.run(
        [sys.executable, "-m", "ingest.cli", str(folder), "--index", str(index_dir), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "RAG_INGEST__OCR": "off"},  # the corpus's scan is one of its bad entries without OCR
    )
    assert run.returncode == 1, run.stderr  # some entries failed, the rest ingested: no crash
    report = json.loads(run.stdout)
    reasons = {f["path"]: f["reason"] for f in report["failed"]}
    assert set(reasons) == set(built.bad), set(reasons) ^ set(built.bad)
    for name, word in built.bad.items():
        assert word in reasons[name], (name, reasons[name])
    assert report["new"] == len(built.good)
    assert set(stored(make_settings(index_dir))) == built.good
    assert malformed_corpus.display(malformed_corpus.NON_UTF8_NAME) == "bad\\xff-name.pdf"


def test_rerun_reports_failures_without_parsing_them_again(tmp_path, embedder):
    docs = tmp_path / "docs"
    built = malformed_corpus.build(docs, eval_set("clapnq-dev") / "docs" / GOOD)
    settings = make_settings(tmp_path / "index")
    first = ingest(settings, docs, embedder)
    assert first.new == len(built.good) and {f.path for f in first.failed} == set(built.bad)

    again = ingest(settings, docs, embedder)
    assert (again.new, again.changed, again.unchanged, again.chunks_added) == (0, 0, len(built.good), 0)
    reasons = {f.path: f.reason for f in again.failed}
    assert set(reasons) == set(built.bad)
    assert reasons["text-bomb.pdf"].endswith(KNOWN_FAILURE_NOTE)  # not parsed again
    assert "parse_chunk" not in again.stage_seconds  # nothing was parsed

    shutil.copy(eval_set("clapnq-dev") / "docs" / GOOD, docs / "html.pdf")  # fixed: ingested on the next run
    fixed = ingest(settings, docs, embedder)
    assert fixed.new == 1 and "html.pdf" not in {f.path for f in fixed.failed}
    assert "html.pdf" in stored(settings)


def test_rebuild_keeps_uploaded_documents(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(eval_set("clapnq-dev") / "docs" / GOOD, docs / GOOD)
    settings = make_settings(tmp_path / "index")
    ingest(settings, docs, embedder)
    uploads = upload_dir(settings, settings.index.path)
    uploads.mkdir(parents=True)
    index = DocumentIndex.open(settings.index.path, settings.index)
    ingestor = build_ingestor(settings, embedder)
    with index.writing():
        for name in ("kept.pdf", "gone.pdf"):
            pdf = pdf_factory.text_pdf(uploads / name, [f"The keeper of {name} lighthouse is Oswin Tarrant."])
            assert ingestor.add_file(index, pdf, UPLOAD_PREFIX + name).new == 1
    index.close()
    (uploads / "gone.pdf").unlink()

    report = ingest(settings, docs, embedder, rebuild=True)
    assert stored(settings) == {GOOD: "folder", "uploads/kept.pdf": "upload", "uploads/gone.pdf": "upload"}
    assert report.removed == 0 and report.changed == 2
    [missing] = report.failed
    assert missing.path == "uploads/gone.pdf" and "missing" in missing.reason and "kept" in missing.reason

    # With other chunking the file-less upload cannot stay (its chunks were made the old way); the other can.
    other = make_settings(settings.index.path, chunking__chunk_tokens=128)
    report = ingest(other, docs, embedder, rebuild=True)
    assert stored(other) == {GOOD: "folder", "uploads/kept.pdf": "upload"}
    assert "removed" in report.failed[0].reason
