"""Read a PDF page by page with pypdf, or say in one short sentence why it cannot be ingested.

``parse_pdf`` raises :class:`~rag.errors.PdfError` for every bad file; the ingest's worker processes call it under
``guarded``, which turns any failure into a :class:`~rag.types.FileFailure` so one file never stops a run.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pypdf
from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError
from pypdf.generic import ArrayObject, IndirectObject, NullObject

from rag.errors import PdfError
from rag.ingestion.ocr import INSTALL_HINT, needs_ocr, ocr_enabled, ocr_pages, tesseract_version
from rag.ingestion.tables import may_hold_table, rows_with_headers
from rag.settings import IngestSettings
from rag.types import FileFailure, Page, PageRange, ParsedDocument

logger = logging.getLogger(__name__)

_MB = 1024 * 1024
_HEADER_WINDOW = 1024  # readers accept the %PDF- marker anywhere in the first 1 KiB
# pypdf 7 refuses arrays over 100,000 elements; real SEC 10-Q filings (MSFT 2023 Q1/Q2) carry a ~110,000-entry
# structure-tree array. Ten times the default still bounds memory on hostile files.
ARRAY_LIMIT = 1_000_000
_NOISY_LOGGERS = ("pypdf", "fontTools")

T = TypeVar("T")

NO_TEXT_LAYER = "no text layer (image-only or scanned PDF)"
# Below this many extracted characters a file is never refused for its text-to-bytes ratio (a short text PDF
# with heavy compression is fine); above it, ingest.max_chars_per_byte applies.
TEXT_RATIO_FLOOR_CHARS = 200_000


def sha256_file(path: Path, chunk_size: int = _MB) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk_size`` pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def parse_pdf(path: Path, settings: IngestSettings) -> ParsedDocument:
    """Extract the text of every page of ``path``; page numbers are 1-based and empty pages are kept.

    Raises:
        PdfError: with the reason shown to the user (not a PDF, empty, too large, corrupt or truncated,
            encrypted with a password, no pages, or no text layer).
    """
    part = read_page_range(path, settings)
    return assemble_document(path, part.content_hash, [part], settings)


class OpenPdf:
    """A PDF opened once (bytes checked, decrypted, page tree loaded) to extract page ranges from.

    Opening can cost seconds on its own (a 2,400-page manual with compressed object streams: ~5 s), so a
    worker that extracts several ranges of one file keeps it open between them.
    """

    def __init__(self, path: Path, settings: IngestSettings):
        self.path = Path(path)
        data = _read_checked(self.path, settings)
        self.settings = settings
        self._data = data  # for rendering pages to OCR; one file per worker is open at a time
        self.size_bytes = len(data)
        self.content_hash = hashlib.sha256(data).hexdigest()
        with _quiet_pypdf(), pypdf.apply_configuration(array_maximum_element_count=ARRAY_LIMIT):
            self._reader = _open_reader(data)
            self.page_count = len(self._reader.pages)

    def read(self, start: int = 0, stop: int | None = None) -> PageRange:
        """Pages ``start`` to ``stop`` (0-based, ``stop`` exclusive, None or past the end: to the end).

        A page whose extraction throws is kept as "" and listed in ``failures`` (``assemble_document`` decides
        whether the document is still usable).
        """
        stop = self.page_count if stop is None else min(stop, self.page_count)
        with _quiet_pypdf(), pypdf.apply_configuration(array_maximum_element_count=ARRAY_LIMIT):
            texts, failures, tables = _extract_pages(self._reader, range(start, stop), self.settings.tables == "rows")
        read_by_ocr: list[int] = []
        failed = {number for number, _ in failures}
        blank = [start + i for i, text in enumerate(texts)
                 if start + i + 1 not in failed and needs_ocr(text, self.settings)]
        if blank and ocr_enabled(self.settings):
            for index, text in zip(blank, ocr_pages(self._data, blank, self.settings), strict=True):
                if not needs_ocr(text, self.settings):  # a blank page stays blank, and is not counted
                    texts[index - start] = text
                    read_by_ocr.append(index + 1)
        # A range over the cap means the whole file is: refuse before joining, chunking and embedding it.
        check_text_size(sum(len(text) for text in texts), self.size_bytes, self.settings)
        return PageRange(
            start=start, texts=tuple(normalize_text(text) for text in texts), failures=tuple(failures),
            page_count=self.page_count, content_hash=self.content_hash, ocr_pages=tuple(read_by_ocr),
            table_pages=tuple(tables),
        )


class LastOpenPdf:
    """Keeps the last PDF opened, for a worker that extracts several ranges of one file in a row; a file whose
    size or mtime changed since is opened again (the ranges' content hashes then disagree, and
    ``assemble_document`` refuses them)."""

    def __init__(self, settings: IngestSettings):
        self.settings = settings
        self._key: tuple[str, int, int] | None = None
        self._pdf: OpenPdf | None = None

    def get(self, path: Path) -> OpenPdf:
        stat = Path(path).stat()  # taken before the file is read
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if self._pdf is None or self._key != key:
            self._key, self._pdf = None, None  # drop the previous file before reading the next
            self._pdf, self._key = OpenPdf(path, self.settings), key
        return self._pdf


def read_page_range(path: Path, settings: IngestSettings, start: int = 0, stop: int | None = None) -> PageRange:
    """``OpenPdf(path, settings).read(start, stop)``; raises PdfError for a file that cannot be opened."""
    return OpenPdf(path, settings).read(start, stop)


def assemble_document(path: Path, content_hash: str, parts: list[PageRange], settings: IngestSettings) -> ParsedDocument:
    """Join the page ranges of one file (in any order, together covering every page) into a document.

    Raises:
        PdfError: when the ranges come from different versions of the file, when extraction failed on every
            page, or when the pages carry (almost) no text.
    """
    parts = sorted(parts, key=lambda part: part.start)
    if any(part.content_hash != content_hash for part in parts):
        raise PdfError("file changed while it was being read (ingest it again)")
    texts = [text for part in parts for text in part.texts]
    count = parts[0].page_count if parts else 0
    if len(texts) != count or any(part.page_count != count for part in parts):
        raise RuntimeError(f"{path}: page ranges cover {len(texts)} of {count} pages")  # a scheduling bug
    failures = [failure for part in parts for failure in part.failures]
    if failures and len(failures) == count:
        raise PdfError(f"corrupt PDF: text extraction failed on every page ({failures[0][1]})")
    if failures:
        number, error = failures[0]
        logger.warning(
            "%s: text extraction failed on %d of %d pages, kept as empty (first: page %d: %s)",
            path, len(failures), count, number, error,
        )
    check_text_size(sum(len(text) for text in texts), Path(path).stat().st_size, settings)
    pages = tuple(Page(number, text) for number, text in enumerate(texts, start=1))
    visible = sum(len(re.sub(r"\s+", "", page.text)) for page in pages)
    if visible == 0 or visible / len(pages) < settings.min_chars_per_page:
        raise PdfError(no_text_reason(settings))
    ocr_count = sum(len(part.ocr_pages) for part in parts)
    table_count = sum(len(part.table_pages) for part in parts)
    return ParsedDocument(path=Path(path), content_hash=content_hash, pages=pages, ocr_pages=ocr_count,
                          table_pages=table_count)


def no_text_reason(settings: IngestSettings) -> str:
    """Why a document without text is skipped, and what would read it."""
    if settings.ocr == "off":
        return f"{NO_TEXT_LAYER}; OCR is off (ingest.ocr)"
    if tesseract_version() is None:
        return f"{NO_TEXT_LAYER}; install Tesseract to read it ({INSTALL_HINT})"
    return f"{NO_TEXT_LAYER}; OCR found no text on its pages"


def check_text_size(chars: int, size_bytes: int, settings: IngestSettings) -> None:
    """PdfError for a text bomb: far more text than a file of ``size_bytes`` holds (a few KiB of compressed,
    repeated content streams can expand to millions of characters and minutes of embedding)."""
    limit = max(TEXT_RATIO_FLOOR_CHARS, settings.max_chars_per_byte * size_bytes)
    if chars > limit:
        raise PdfError(
            f"too much text for the file size: {chars:,} characters from {size_bytes:,} bytes, above "
            f"ingest.max_chars_per_byte ({settings.max_chars_per_byte:g} per byte; real PDFs stay below 1)"
        )


def guarded(name: str, work: Callable[[], T]) -> T | FileFailure:
    """``work()``, with any failure turned into a FileFailure for ``name``: one bad file never stops a run."""
    try:
        return work()
    except PdfError as error:
        return FileFailure(path=name, reason=str(error))
    except Exception as error:  # noqa: BLE001 - pypdf raises many types for broken files
        return FileFailure(path=name, reason=f"unexpected error: {type(error).__name__}: {error}")


def normalize_text(text: str) -> str:
    """Light clean-up that keeps line breaks: no NULs, runs of spaces collapsed (pypdf pads justified lines),
    no trailing spaces, at most two blank lines in a row."""
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(re.sub(r"[ \t]{2,}", " ", line).rstrip() for line in text.split("\n"))
    return re.sub(r"\n{4,}", "\n\n\n", text).strip("\n")


def _read_checked(path: Path, settings: IngestSettings) -> bytes:
    """The file's bytes, after the checks that need no PDF parser (size and header)."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise PdfError("empty file (0 bytes)")
        if size > settings.max_file_mb * _MB:
            raise PdfError(
                f"file is {_format_mb(size / _MB)} MB, above the ingest.max_file_mb limit of "
                f"{settings.max_file_mb:g} MB"
            )
        data = path.read_bytes()
    except OSError as error:
        raise PdfError(f"cannot read file: {error.strerror or error}") from error
    if b"%PDF-" not in data[:_HEADER_WINDOW]:
        raise PdfError("not a PDF file (no %PDF header)")
    return data


def _open_reader(data: bytes) -> PdfReader:
    """A reader with the page tree loaded, decrypted with the empty user password when encrypted."""
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise PdfError("encrypted PDF (password required)")
        if len(reader.pages) == 0:
            raise PdfError("PDF has no pages")
    except PdfError:
        raise
    except FileNotDecryptedError as error:
        raise PdfError("encrypted PDF (password required)") from error
    except DependencyError as error:  # AES without the cryptography package
        raise PdfError(f"encrypted PDF needs an extra package: {error} (pip install 'pypdf[crypto]')") from error
    except Exception as error:  # noqa: BLE001 - pypdf raises many types for broken files
        raise PdfError(f"corrupt or truncated PDF: {str(error) or type(error).__name__}") from error
    return reader


def _extract_pages(
    reader: PdfReader, indices: range, tables: bool,
) -> tuple[list[str], list[tuple[int, str]], list[int]]:
    """Raw text of the pages at ``indices``; a page whose extraction throws becomes "" and is listed as
    (1-based page, "ErrorType: message"). With ``tables``, a page holding a table has its rows rewritten to
    carry their column headers (``rag.ingestion.tables``); the third list holds those pages (1-based)."""
    texts: list[str] = []
    failures: list[tuple[int, str]] = []
    with_rows: list[int] = []
    for index in indices:
        try:
            page = reader.pages[index]
            missing = _missing_contents(page)
            if missing:
                raise PdfError(f"page content stream missing ({missing} not found in the file)")
            text = page.extract_text() or ""
            rows = _table_rows(page) if tables and may_hold_table(text) else None
            texts.append(text if rows is None else rows)
            if rows is not None:
                with_rows.append(index + 1)
        except Exception as error:  # noqa: BLE001 - a broken page must not lose the rest of the document
            texts.append("")
            failures.append((index + 1, f"{type(error).__name__}: {error}"))
    return texts, failures, with_rows


def _table_rows(page: Any) -> str | None:
    """The page read in layout mode with its table rows carrying their headers, or None when it holds no
    table or layout mode fails on it (the plain text is still good)."""
    try:
        return rows_with_headers(page.extract_text(extraction_mode="layout") or "")
    except Exception as error:  # noqa: BLE001 - layout mode is a second reading; its failure loses nothing
        logger.debug("layout extraction failed, plain text kept: %s: %s", type(error).__name__, error)
        return None


def _missing_contents(page: Any) -> str | None:
    """The reference of a content stream the page points at but the file lacks (pypdf, not strict, would
    read it as an empty page and the file would pass for image-only), or None."""
    if "/Contents" not in page:
        return None
    raw = page.raw_get("/Contents")  # unresolved: an IndirectObject, or an array of them
    refs = [raw]
    if isinstance(raw, IndirectObject) and isinstance(raw.get_object(), ArrayObject):
        refs = list(raw.get_object())
    elif isinstance(raw, ArrayObject):
        refs = list(raw)
    for ref in refs:
        if isinstance(ref, IndirectObject) and isinstance(ref.get_object(), (NullObject, type(None))):
            return f"object {ref.idnum} {ref.generation} R"
    return None


@contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """Silence pypdf's and fontTools' warnings about harmless quirks of real files (ingest progress stays readable)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)


def _format_mb(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"
