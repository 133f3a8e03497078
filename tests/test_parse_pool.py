"""Parsing in worker processes with long PDFs split into page ranges gives what parsing in one process gives."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from rag.errors import PdfError
from rag.ingestion.parse_pool import ParsedFile, parse_files
from rag.ingestion.pdf_parsing import assemble_document, read_page_range
from rag.settings import IngestSettings, Settings
from rag.types import FileFailure
from tests import pdf_factory
from tests.conftest import eval_set


def _results(files, tokenizer_path, settings, workers) -> dict[str, ParsedFile | FileFailure]:
    results = list(parse_files(files, tokenizer_path, settings, workers))
    names = [r.name if isinstance(r, ParsedFile) else r.path for r in results]
    assert sorted(names) == sorted(name for name, _ in files), "one result per file"
    return dict(zip(names, results))


def test_page_ranges_in_workers_match_one_process(tmp_path, embedder):
    tokenizer_path = embedder.model_path
    sec = eval_set("sec10q-dev") / "docs" / "2023 Q1 AAPL.pdf"
    squad = eval_set("squad2-dev") / "docs" / "Normans.pdf"
    docs = tmp_path / "docs"
    docs.mkdir()
    files = [("aapl.pdf", shutil.copy(sec, docs / "aapl.pdf")), ("normans.pdf", shutil.copy(squad, docs / "n.pdf"))]
    files += [
        # ranged, some pages fail to extract: kept, the broken pages empty
        ("broken.pdf", pdf_factory.broken_page_pdf(docs / "broken.pdf", [f"text of page {i}" for i in range(1, 8)], {2, 5})),
        # ranged, every page fails (in different ranges): refused as a whole
        ("dead.pdf", pdf_factory.broken_page_pdf(docs / "dead.pdf", ["a", "b", "c", "d", "e"], {1, 2, 3, 4, 5})),
        # ranged, no text in any range: refused as a scan
        ("scan.pdf", pdf_factory.image_only_pdf(docs / "scan.pdf", pages=5)),
        ("cut.pdf", pdf_factory.truncated_pdf(docs / "cut.pdf", sec)),
    ]
    files = [(name, Path(path)) for name, path in files]
    # every file above but cut.pdf: ranges; OCR off, so the scan is refused (tests/test_ocr.py reads scans)
    settings = Settings().with_overrides({"ingest": {"pages_per_task": 3, "ocr": "off"}})

    serial = _results(files, tokenizer_path, settings, workers=1)
    pooled = _results(files, tokenizer_path, settings, workers=2)

    assert pooled == serial
    assert isinstance(pooled["aapl.pdf"], ParsedFile) and pooled["aapl.pdf"].pages > 3 * 10
    assert isinstance(pooled["broken.pdf"], ParsedFile) and pooled["broken.pdf"].pages == 7
    text = " ".join(c.text for c in pooled["broken.pdf"].chunks)
    assert "text of page 3" in text and "text of page 2" not in text
    assert "text extraction failed on every page" in pooled["dead.pdf"].reason
    assert "no text layer" in pooled["scan.pdf"].reason
    assert "corrupt or truncated" in pooled["cut.pdf"].reason
    assert [c.position for c in pooled["aapl.pdf"].chunks] == list(range(len(pooled["aapl.pdf"].chunks)))


def test_ranges_of_two_versions_of_a_file_are_refused(tmp_path):
    settings = IngestSettings()
    path = pdf_factory.text_pdf(tmp_path / "a.pdf", ["one", "two", "three", "four"])
    first = read_page_range(path, settings, 0, 2)
    pdf_factory.text_pdf(path, ["one", "two", "THREE", "four"])  # rewritten between two range reads
    second = read_page_range(path, settings, 2, 4)
    assert first.page_count == second.page_count == 4
    with pytest.raises(PdfError, match="file changed while it was being read"):
        assemble_document(path, first.content_hash, [first, second], settings)
    # Same bytes, ranges in any order: the pages come back in order.
    second_again = replace(second, content_hash=first.content_hash)
    document = assemble_document(path, first.content_hash, [second_again, first], settings)
    assert [p.number for p in document.pages] == [1, 2, 3, 4]
    assert [p.text for p in document.pages] == ["one", "two", "THREE", "four"]


def test_a_worker_reopens_a_file_rewritten_between_its_ranges(tmp_path, embedder):
    from rag.ingestion import parse_pool

    path = pdf_factory.text_pdf(tmp_path / "a.pdf", ["one", "two", "three", "four"])
    parse_pool._worker_init(embedder.model_path, Settings())
    try:
        first = parse_pool._worker_range("a.pdf", path, 0, 2)
        assert parse_pool._worker_range("a.pdf", path, 2, 4).content_hash == first.content_hash  # kept open
        pdf_factory.text_pdf(path, ["one", "two", "THREE", "four"])
        second = parse_pool._worker_range("a.pdf", path, 2, 4)
        assert second.texts == ("THREE", "four") and second.content_hash != first.content_hash
    finally:
        parse_pool._worker_state.clear()
