"""Ingest over real PDFs: pages right, incremental reruns, bad files reported and skipped, CLI contract."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from rag.evaluation.dataset import load_qa
from rag.indexing.index import DocumentIndex, IndexIncompatible
from tests import pdf_factory
from tests.conftest import REPO, eval_set, ingest, make_settings


def chunk_ids(settings) -> dict[str, list[int]]:
    """Chunk ids per document, in position order."""
    index = DocumentIndex.open(settings.index.path, settings.index)
    try:
        out: dict[str, list[int]] = {}
        for chunk in index.store.all_chunks():
            out.setdefault(chunk.document, []).append(chunk.id)
        assert index.vectors.ntotal == index.store.count_chunks()
        return out
    finally:
        index.close()


def _squashed(text: str) -> str:
    return " ".join(text.split())


def test_known_sentences_land_on_their_pages(small_index):
    """squad2-dev evidence sentences are found in a chunk whose page range holds the gold page."""
    items = [
        q for q in load_qa(eval_set("squad2-dev") / "qa.jsonl")
        if q.answerable and q.doc in ("Normans.pdf", "Steam_engine.pdf") and len(q.pages) == 1 and q.evidence
    ]
    index = DocumentIndex.open(small_index.index.path, small_index.index)
    chunks = index.store.all_chunks()
    index.close()
    checked = 0
    for item in items[:40]:
        probe = _squashed(item.evidence)[:60]
        hits = [c for c in chunks if c.document == item.doc and probe in _squashed(c.text)]
        if not hits:
            continue  # the probe straddles a chunk boundary; others cover this
        checked += 1
        assert any(c.page_start <= item.pages[0] <= c.page_end for c in hits), (item.id, item.pages, probe)
        assert all(c.page_start <= c.page_end for c in hits)
    assert checked >= 20, f"only {checked} evidence sentences found whole in a chunk"


def test_sec_filing_pages_and_tables(tmp_path, embedder):
    """A real 10-Q with tables: every page's chunks record it, and chunk spans are valid offsets."""
    source = eval_set("sec10q-dev") / "docs" / "2023 Q1 AAPL.pdf"
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(source, docs / source.name)
    settings = make_settings(tmp_path / "index")
    report = ingest(settings, docs, embedder)
    pages = len(PdfReader(source).pages)
    assert report.pages == pages and not report.failed
    index = DocumentIndex.open(settings.index.path, settings.index)
    chunks = index.store.all_chunks()
    index.close()
    reader = PdfReader(source)
    # A distinctive table label: the page pypdf puts it on must be the page recorded for its chunk.
    needle = "Total net sales"
    expected = {n for n, page in enumerate(reader.pages, start=1) if needle in (page.extract_text() or "")}
    found = {p for c in chunks if needle in c.text for p in range(c.page_start, c.page_end + 1)}
    assert expected and expected <= found
    assert {c.page_start for c in chunks} <= set(range(1, pages + 1))
    assert all(c.char_start < c.char_end for c in chunks)


def test_incremental_rerun_touches_only_what_changed(tmp_path, embedder):
    squad = eval_set("squad2-dev") / "docs"
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    for name in ("Normans.pdf", "Packet_switching.pdf"):
        shutil.copy(squad / name, docs / name)
    shutil.copy(squad / "1973_oil_crisis.pdf", docs / "sub" / "1973_oil_crisis.pdf")
    settings = make_settings(tmp_path / "index")

    first = ingest(settings, docs, embedder)
    assert (first.new, first.changed, first.unchanged, first.removed) == (3, 0, 0, 0)
    before = chunk_ids(settings)
    assert set(before) == {"Normans.pdf", "Packet_switching.pdf", "sub/1973_oil_crisis.pdf"}

    again = ingest(settings, docs, embedder)
    assert (again.new, again.changed, again.unchanged, again.chunks_added) == (0, 0, 3, 0)
    assert chunk_ids(settings) == before

    # Change one (drop its last page), delete one, add one.
    writer = PdfWriter(clone_from=docs / "Packet_switching.pdf")
    writer.remove_page(len(writer.pages) - 1)
    writer.write(docs / "Packet_switching.pdf")
    (docs / "sub" / "1973_oil_crisis.pdf").unlink()
    shutil.copy(squad / "Harvard_University.pdf", docs / "Harvard_University.pdf")

    third = ingest(settings, docs, embedder)
    assert (third.new, third.changed, third.unchanged, third.removed) == (1, 1, 1, 0 + 1)
    after = chunk_ids(settings)
    assert after["Normans.pdf"] == before["Normans.pdf"]  # unchanged file kept its chunk ids
    assert set(after) == {"Normans.pdf", "Packet_switching.pdf", "Harvard_University.pdf"}
    assert not set(after["Packet_switching.pdf"]) & set(before["Packet_switching.pdf"])  # re-embedded
    assert third.chunks_removed == len(before["Packet_switching.pdf"]) + len(before["sub/1973_oil_crisis.pdf"])
    all_ids = [i for ids in after.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == third.chunks_total  # no duplicate chunk


def test_bad_pdfs_are_reported_and_skipped(tmp_path, embedder):
    good = eval_set("squad2-dev") / "docs" / "Normans.pdf"
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(good, docs / "good.pdf")
    pdf_factory.truncated_pdf(docs / "truncated.pdf", good)
    pdf_factory.encrypted_pdf(docs / "encrypted.pdf", good)
    pdf_factory.empty_pdf(docs / "empty.pdf")
    pdf_factory.not_a_pdf(docs / "html.pdf")
    pdf_factory.zero_byte_pdf(docs / "zero.pdf")
    pdf_factory.image_only_pdf(docs / "scan.pdf")
    pdf_factory.garbage_pdf(docs / "garbage.pdf")
    settings = make_settings(tmp_path / "index")

    report = ingest(settings, docs, embedder)
    reasons = {f.path: f.reason for f in report.failed}
    assert set(reasons) == {"truncated.pdf", "encrypted.pdf", "empty.pdf", "html.pdf", "zero.pdf", "scan.pdf", "garbage.pdf"}
    assert "password" in reasons["encrypted.pdf"]
    assert "no pages" in reasons["empty.pdf"]
    assert "not a PDF" in reasons["html.pdf"]
    assert "no text layer" in reasons["scan.pdf"]
    assert set(chunk_ids(settings)) == {"good.pdf"}
    assert report.new == 1  # the failures are listed, not counted as new


def test_changing_chunking_needs_rebuild(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(eval_set("squad2-dev") / "docs" / "Normans.pdf", docs / "a.pdf")
    ingest(make_settings(tmp_path / "index"), docs, embedder)
    shutil.copy(eval_set("squad2-dev") / "docs" / "Steam_engine.pdf", docs / "b.pdf")
    other = make_settings(tmp_path / "index", chunking__chunk_tokens=128)
    with pytest.raises(IndexIncompatible, match="--rebuild"):
        ingest(other, docs, embedder)
    report = ingest(other, docs, embedder, rebuild=True)
    assert report.changed == 1 and report.new == 1
    assert set(chunk_ids(other)) == {"a.pdf", "b.pdf"}


def _cli(*args: str, env_index: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_cli_usage_errors(tmp_path):
    missing = _cli(str(tmp_path / "nope"), "--index", str(tmp_path / "i"))
    assert missing.returncode == 2 and "folder not found" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = _cli(str(tmp_path / "empty"), "--index", str(tmp_path / "i"))
    assert empty.returncode == 2 and "no PDF files" in empty.stderr
    assert not (tmp_path / "i").exists()  # nothing created for a usage error


def test_cli_reports_json_and_exit_code(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(eval_set("squad2-dev") / "docs" / "Normans.pdf", docs / "Normans.pdf")
    pdf_factory.not_a_pdf(docs / "bad.pdf")
    run = _cli(str(docs), "--index", str(tmp_path / "index"), "--json")
    assert run.returncode == 1, run.stderr  # some files failed, the rest ingested
    report = json.loads(run.stdout)
    assert report["new"] == 1 and report["failed"] == [{"path": "bad.pdf", "reason": report["failed"][0]["reason"]}]
    assert report["chunks_total"] > 0 and report["pages"] > 0
