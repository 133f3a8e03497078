"""rag.ingestion.pdf_parsing on real PDFs (squad2-dev articles, SEC 10-Q filings) and on a corpus of broken files."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pypdf
import pytest
from pypdf import PdfReader

from rag.ingestion import pdf_parsing
from rag.errors import PdfError
from rag.ingestion.pdf_parsing import guarded, normalize_text, parse_pdf, sha256_file
from rag.settings import IngestSettings
from rag.types import FileFailure, ParsedDocument
from tests.conftest import eval_set
from tests.pdf_factory import (
    broken_page_pdf,
    empty_pdf,
    encrypted_pdf,
    garbage_pdf,
    image_only_pdf,
    large_array_pdf,
    not_a_pdf,
    owner_only_encrypted_pdf,
    text_pdf,
    truncated_pdf,
    zero_byte_pdf,
)

SETTINGS = IngestSettings(ocr="off")  # a scan is refused without OCR (tests/test_ocr.py reads it)
SEC_SAMPLE = "2023 Q2 AAPL.pdf"  # 28 pages (the smallest filing), encrypted with an owner password only


def squeeze(text: str) -> str:
    """Whitespace-normalised text: pypdf pads justified lines with double spaces and breaks lines anywhere."""
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def squad_docs() -> Path:
    return eval_set("squad2-dev") / "docs"


@pytest.fixture(scope="module")
def squad_parsed(squad_docs) -> dict[str, ParsedDocument]:
    return {path.name: parse_pdf(path, SETTINGS) for path in sorted(squad_docs.glob("*.pdf"))}


@pytest.fixture
def source_pdf(squad_docs) -> Path:
    """A real PDF to truncate or encrypt."""
    return squad_docs / "Normans.pdf"


# --- our own text PDFs --------------------------------------------------------------------------------------


def test_text_pdf_round_trips(tmp_path):
    pages = [
        "Hello (world) with a back\\slash and caf\u00e9.",
        "A long page. " + " ".join(f"word{i}" for i in range(300)),
        "",
        "Last page\nwith two lines.",
    ]
    doc = parse_pdf(text_pdf(tmp_path / "text.pdf", pages), SETTINGS)
    assert [page.number for page in doc.pages] == [1, 2, 3, 4]
    assert [squeeze(page.text) for page in doc.pages] == [squeeze(text) for text in pages]
    assert doc.pages[2].text == ""  # empty pages are kept so numbering stays right
    assert "\n" in doc.pages[1].text  # line breaks survive


def test_content_hash_is_sha256_of_the_bytes(tmp_path):
    path = text_pdf(tmp_path / "hash.pdf", ["some text"])
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk_size=7) == expected
    assert parse_pdf(path, SETTINGS).content_hash == expected


def test_normalize_text():
    raw = "line one   \r\nline\x00 two\t\n\n\n\n\n\nafter gap  \n\n"
    assert normalize_text(raw) == "line one\nline two\n\n\nafter gap"


# --- the malformed corpus -----------------------------------------------------------------------------------

MALFORMED: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "not_a_pdf": (lambda path, src: not_a_pdf(path), "not a PDF file (no %PDF header)"),
    "zero_bytes": (lambda path, src: zero_byte_pdf(path), "empty file (0 bytes)"),
    "truncated": (truncated_pdf, "corrupt or truncated PDF"),
    "garbage": (lambda path, src: garbage_pdf(path), "corrupt or truncated PDF"),
    "encrypted_aes256": (encrypted_pdf, "encrypted PDF (password required)"),
    "encrypted_rc4": (lambda path, src: encrypted_pdf(path, src, algorithm="RC4-128"), "encrypted PDF (password"),
    "no_pages": (lambda path, src: empty_pdf(path), "PDF has no pages"),
    "image_only": (lambda path, src: image_only_pdf(path), "no text layer (image-only or scanned PDF"),
    "all_pages_broken": (
        lambda path, src: broken_page_pdf(path, ["one", "two"], broken={1, 2}),
        "text extraction failed on every page",
    ),
}


def parse_or_failure(path: Path, settings: IngestSettings) -> ParsedDocument | FileFailure:
    """What an ingest worker does with one file: ``parse_pdf`` under ``guarded`` (module level: picklable)."""
    return guarded(str(path), lambda: pdf_parsing.parse_pdf(path, settings))


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_pdf_is_refused_with_its_reason(case, tmp_path, source_pdf):
    make, reason = MALFORMED[case]
    path = make(tmp_path / f"{case}.pdf", source_pdf)
    with pytest.raises(PdfError) as raised:
        parse_pdf(path, SETTINGS)
    assert reason in str(raised.value)
    failure = parse_or_failure(path, SETTINGS)
    assert failure == FileFailure(path=str(path), reason=str(raised.value))


def test_too_large_file_is_refused(source_pdf):
    with pytest.raises(PdfError, match=r"file is 0\.\d+ MB, above the ingest.max_file_mb limit of 0.01 MB"):
        parse_pdf(source_pdf, IngestSettings(max_file_mb=0.01))


def test_too_little_text_counts_as_no_text_layer(tmp_path):
    path = text_pdf(tmp_path / "sparse.pdf", ["tiny", ""])
    assert len(parse_pdf(path, IngestSettings(min_chars_per_page=2, ocr="off")).pages) == 2  # 4 chars / 2 pages
    with pytest.raises(PdfError, match="no text layer"):
        parse_pdf(path, IngestSettings(min_chars_per_page=3, ocr="off"))


def test_missing_file_is_a_failure_not_a_crash(tmp_path):
    failure = parse_or_failure(tmp_path / "absent.pdf", SETTINGS)
    assert isinstance(failure, FileFailure) and failure.reason.startswith("cannot read file")


def test_owner_only_encryption_ingests(tmp_path, source_pdf):
    path = owner_only_encrypted_pdf(tmp_path / "owner.pdf", source_pdf)
    assert PdfReader(path).is_encrypted
    doc = parse_pdf(path, SETTINGS)
    plain = parse_pdf(source_pdf, SETTINGS)
    assert [page.text for page in doc.pages] == [page.text for page in plain.pages]


def test_one_broken_page_becomes_empty_with_a_warning(tmp_path, caplog):
    path = broken_page_pdf(tmp_path / "broken.pdf", ["page one", "page two", "page three"], broken={2})
    with caplog.at_level(logging.WARNING, logger="rag.ingestion.pdf_parsing"):
        doc = parse_pdf(path, SETTINGS)
    assert [(page.number, page.text) for page in doc.pages] == [(1, "page one"), (2, ""), (3, "page three")]
    assert "failed on 1 of 3 pages" in caplog.text


def test_arrays_beyond_pypdf_default_limit_are_read(tmp_path):
    path = large_array_pdf(tmp_path / "big_array.pdf", ["a page with a huge array"], elements=110_000)
    with pytest.raises(pypdf.errors.LimitReachedError):  # what pypdf 7.1 does on its own
        PdfReader(path, strict=False).pages[0].extract_text()
    assert parse_pdf(path, SETTINGS).pages[0].text == "a page with a huge array"


def test_pypdf_noise_is_silenced_and_logger_restored(tmp_path, source_pdf, caplog):
    pypdf_logger = logging.getLogger("pypdf")
    before = pypdf_logger.level
    with caplog.at_level(logging.DEBUG):
        parse_or_failure(truncated_pdf(tmp_path / "cut.pdf", source_pdf), SETTINGS)  # pypdf: "EOF marker not found"
    assert not [record for record in caplog.records if record.name.startswith("pypdf")]
    assert pypdf_logger.level == before


def test_guarded_reports_unexpected_errors(monkeypatch, tmp_path):
    def explode(path, settings):
        raise RuntimeError("boom")

    monkeypatch.setattr(pdf_parsing, "parse_pdf", explode)
    failure = parse_or_failure(tmp_path / "x.pdf", SETTINGS)
    assert failure == FileFailure(path=str(tmp_path / "x.pdf"), reason="unexpected error: RuntimeError: boom")


def test_parse_results_and_failures_cross_worker_processes(tmp_path, source_pdf):
    bad = not_a_pdf(tmp_path / "bad.pdf")
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        good_result, bad_result = pool.map(parse_or_failure, [source_pdf, bad], [SETTINGS, SETTINGS])
    assert isinstance(good_result, ParsedDocument) and len(good_result.pages) == 8
    assert bad_result == FileFailure(path=str(bad), reason="not a PDF file (no %PDF header)")
    assert pickle.loads(pickle.dumps(good_result)) == good_result


# --- real PDFs ----------------------------------------------------------------------------------------------


def test_every_squad_doc_parses(squad_docs, squad_parsed):
    assert len(squad_parsed) == len(list(squad_docs.glob("*.pdf"))) >= 3
    for name, doc in squad_parsed.items():
        assert len(doc.pages) == len(PdfReader(squad_docs / name).pages) > 0
        assert [page.number for page in doc.pages] == list(range(1, len(doc.pages) + 1))
        assert doc.content_hash == sha256_file(squad_docs / name)


def test_evidence_lands_on_its_gold_page(squad_parsed):
    """The first 8 words of each single-page evidence passage are found on its gold page and on no other."""
    items = [json.loads(line) for line in (eval_set("squad2-dev") / "qa.jsonl").read_text().splitlines() if line]
    checked: list[str] = []
    misses = []
    for item in items:
        if not item.get("answerable") or not item.get("evidence") or len(item.get("pages", [])) != 1:
            continue
        key = " ".join(squeeze(item["evidence"]).split()[:8])
        pages = squad_parsed[item["doc"]].pages
        found = [page.number for page in pages if key in squeeze(page.text)]
        checked.append(item["doc"])
        if found != item["pages"]:
            misses.append((item["id"], item["doc"], item["pages"], found, key))
    print(f"evidence on gold page: {len(checked) - len(misses)}/{len(checked)} across {len(set(checked))} docs")
    assert len(checked) >= 10 and len(set(checked)) >= 3
    assert not misses, misses


def test_sec_10q_parses_with_known_page():
    path = eval_set("sec10q-dev") / "docs" / SEC_SAMPLE
    doc = parse_pdf(path, SETTINGS)
    reader = PdfReader(path)
    assert reader.is_encrypted  # owner-password only: must still ingest
    assert len(doc.pages) == len(reader.pages) == 28
    assert "Apple Inc." in doc.pages[0].text and "FORM 10-Q" in doc.pages[0].text
    # the income statement: total net sales for the quarter and the six months, this year and the last
    income_statement = "Total net sales 94,836 97,278 211,990 221,223"
    assert [page.number for page in doc.pages if income_statement in squeeze(page.text)] == [4]
    # with ingest.tables "rows", each figure after its column's header
    rows = parse_pdf(path, IngestSettings(ocr="off", tables="rows"))
    row = ("Net sales, Total net sales: Three Months Ended April 1,2023: 94,836; March 26,2022: 97,278; "
           "Six Months Ended April 1,2023: 211,990; March 26,2022: 221,223 (in millions).")
    assert [page.number for page in rows.pages if row in squeeze(page.text)] == [4]


@pytest.mark.slow
def test_every_sec_10q_parses(caplog):
    """All 20 filings (about 1,000 pages; about 100 s in one process)."""
    paths = sorted((eval_set("sec10q-dev") / "docs").glob("*.pdf"))
    assert len(paths) == 20
    pages = 0
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="rag.ingestion.pdf_parsing"):
        for path in paths:
            doc = parse_pdf(path, SETTINGS)
            with pypdf.apply_configuration(array_maximum_element_count=1_000_000):  # MSFT filings exceed 100k
                assert len(doc.pages) == len(PdfReader(path, strict=False).pages), path.name
            assert sum(len(page.text) for page in doc.pages) / len(doc.pages) > 500, path.name
            pages += len(doc.pages)
    seconds = time.perf_counter() - start
    print(f"sec10q-dev: {len(paths)} files, {pages} pages, {seconds:.1f} s, {seconds / pages * 1000:.0f} ms/page")
    assert "text extraction failed" not in caplog.text
