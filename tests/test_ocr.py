"""OCR for pages without a text layer (rag.ingestion.ocr), on real scans: real pages of ../shared/eval PDFs rendered
to images and written as image-only PDFs, then read back by Tesseract, ingested, and asked about.

Tesseract comes from Debian (scripts/setup.sh and .ci/run install it, best effort); without it these tests skip,
saying so, except the ones about what happens without it."""

from __future__ import annotations

import asyncio
import re

import pytest

from rag.errors import PdfError
from rag.ingestion import ocr, pdf_parsing
from rag.ingestion.pdf_parsing import parse_pdf
from rag.settings import IngestSettings
from tests.conftest import ingest, make_settings, squad_doc
from tests.pdf_factory import image_only_copy

needs_tesseract = pytest.mark.skipif(
    ocr.tesseract_version() is None, reason=f"Tesseract is not installed ({ocr.INSTALL_HINT})"
)
STEAM_PAGES = [1, 2, 3]  # page 3 holds the README's question's answer ("Charles Porter")


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def steam_scan(tmp_path_factory):
    """An image-only copy of the first three pages of Steam_engine.pdf (150 dpi), in a folder of its own."""
    folder = tmp_path_factory.mktemp("scans")
    return image_only_copy(squad_doc("Steam_engine.pdf"), folder / "Steam_engine_scan.pdf", STEAM_PAGES)


@needs_tesseract
def test_ocr_text_matches_the_text_layer_of_the_original(steam_scan) -> None:
    import pypdf
    from rapidfuzz.distance import Levenshtein

    document = parse_pdf(steam_scan, IngestSettings(ocr="on"))
    assert document.ocr_pages == 3 and [p.number for p in document.pages] == STEAM_PAGES
    original = pypdf.PdfReader(squad_doc("Steam_engine.pdf"))
    for page in document.pages:
        reference = _plain(original.pages[page.number - 1].extract_text())
        error_rate = Levenshtein.normalized_distance(_plain(page.text), reference)
        assert error_rate < 0.02, (page.number, error_rate)  # measured 0.000 on a 2-core run, 150 dpi scans


@needs_tesseract
def test_a_scanned_page_is_laid_out_and_chunked_as_its_text_original(steam_scan) -> None:
    """No blank line between Tesseract's blocks (the chunker cuts there first): the scan makes as many chunks as
    the text original, not one per paragraph."""
    from dataclasses import replace

    from rag.ingestion.chunking import Chunker
    from rag.models import resolve_embedder
    from rag.settings import ChunkingSettings, ModelSettings

    scanned = parse_pdf(steam_scan, IngestSettings(ocr="on"))
    assert all("\n\n" not in page.text for page in scanned.pages)
    original = parse_pdf(squad_doc("Steam_engine.pdf"), IngestSettings(ocr="off"))
    original = replace(original, pages=original.pages[: len(STEAM_PAGES)])
    chunker = Chunker(resolve_embedder(ModelSettings()), ChunkingSettings()).load()
    assert len(chunker.chunk(scanned, "scan")) == len(chunker.chunk(original, "text"))


def test_tesseract_blocks_are_joined_line_by_line() -> None:
    assert ocr.as_text_layer("First block line\nsecond line\n\nNext block\n \n\nLast\n") == (
        "First block line\nsecond line\nNext block\nLast\n"
    )


def test_without_ocr_a_scan_is_refused_saying_why(steam_scan, monkeypatch) -> None:
    with pytest.raises(PdfError, match=r"no text layer .*OCR is off \(ingest\.ocr\)"):
        parse_pdf(steam_scan, IngestSettings(ocr="off"))
    # A machine without Tesseract: "auto" skips the scan and says what to install; "on" is an error.
    monkeypatch.setattr(ocr, "tesseract_version", lambda: None)
    monkeypatch.setattr(pdf_parsing, "tesseract_version", lambda: None)
    with pytest.raises(PdfError, match="install Tesseract to read it"):
        parse_pdf(steam_scan, IngestSettings(ocr="auto"))
    assert "not available" in ocr.ocr_status(IngestSettings(ocr="auto"))
    with pytest.raises(RuntimeError, match="Tesseract is not installed"):
        ocr.ocr_enabled(IngestSettings(ocr="on"))


def test_a_page_with_a_text_layer_is_never_ocred(monkeypatch, tmp_path) -> None:
    calls: list[list[int]] = []
    monkeypatch.setattr(pdf_parsing, "ocr_pages", lambda data, indices, settings: calls.append(list(indices)) or [])
    monkeypatch.setattr(pdf_parsing, "ocr_enabled", lambda settings: True)
    document = parse_pdf(squad_doc("Normans.pdf"), IngestSettings(ocr="on"))
    assert calls == [] and document.ocr_pages == 0


@needs_tesseract
def test_ingest_counts_ocred_pages_and_chunks_keep_their_pages(steam_scan, embedder, tmp_path) -> None:
    settings = make_settings(tmp_path / "index", ingest__ocr="on")
    report = ingest(settings, steam_scan.parent, embedder)
    assert report.failed == [] and report.new == 1
    assert report.ocr_pages == 3 and report.pages == 3
    from rag.indexing.index import DocumentIndex

    index = DocumentIndex.open(settings.index.path, settings.index)
    try:
        chunks = [c for c in index.store.all_chunks() if c.document == "Steam_engine_scan.pdf"]
    finally:
        index.close()
    assert {c.page_start for c in chunks} <= set(STEAM_PAGES) and max(c.page_end for c in chunks) == 3
    holding = [c for c in chunks if "Charles Porter" in c.text]
    assert holding and all(c.page_start <= 3 <= c.page_end for c in holding)


@needs_tesseract
@pytest.mark.e2e
def test_a_question_is_answered_from_a_scanned_document(steam_scan, runtime, tmp_path) -> None:
    settings = make_settings(tmp_path / "index", ingest__ocr="on")
    ingest(settings, steam_scan.parent, runtime.embedder)
    question = "What company developed the most successful steam engine indicator?"
    with runtime.derive({"index": {"path": settings.index.path}, "ingest": {"ocr": "on"}}) as scanned:
        answer = asyncio.run(scanned.answers.answer(question))
    assert not answer.abstained, answer.reason
    assert "Charles Porter" in answer.text
    assert answer.citations[0].document == "Steam_engine_scan.pdf" and answer.citations[0].page_start == 3


@needs_tesseract
def test_a_missing_language_is_named_and_tessdata_prefix_wins_only_with_language_data(tmp_path, monkeypatch) -> None:
    scan = image_only_copy(squad_doc("Steam_engine.pdf"), tmp_path / "one.pdf", [3])
    with pytest.raises(RuntimeError, match=r"cannot load language 'zzz' .*apt-get install tesseract-ocr-<lang>"):
        ocr.ocr_pages(scan.read_bytes(), [0], IngestSettings(ocr="on", ocr_language="zzz"))
    system = ocr.tessdata_dir()
    # A TESSDATA_PREFIX without any *.traineddata is passed over for the system's folder; one with them is used.
    monkeypatch.setenv("TESSDATA_PREFIX", str(tmp_path))
    ocr.tessdata_dir.cache_clear()
    try:
        assert ocr.tessdata_dir() == system
        monkeypatch.setenv("TESSDATA_PREFIX", system)
        ocr.tessdata_dir.cache_clear()
        assert ocr.tessdata_dir() == system
    finally:
        ocr.tessdata_dir.cache_clear()
