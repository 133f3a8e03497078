"""Text for pages without a text layer: the page rendered (pypdfium2) and read by Tesseract (pytesseract).

A scanned contract, a fax, a photographed page: pypdf finds no text on them, and without OCR the document is
reported as image-only and skipped. With ``ingest.ocr`` on ("auto": wherever Tesseract is installed), each page
whose extracted text is (nearly) empty is rendered at ``ingest.ocr_dpi`` in grey and read by Tesseract; pages
with a text layer are never OCR'd, so a born-digital PDF costs nothing more.

pytesseract over tesserocr: it drives the ``tesseract`` program Debian installs (``apt-get install tesseract-ocr
tesseract-ocr-eng``) and is pure Python, so it installs anywhere; tesserocr links against libtesseract and its
wheels must match the system's library version. The cost of starting the program per page (tens of ms) is small
beside the recognition itself (one to a few seconds per page on a CPU core).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from functools import lru_cache

from rag.settings import IngestSettings

INSTALL_HINT = "apt-get install tesseract-ocr tesseract-ocr-eng, then pip install -e '.[ocr]'"


@lru_cache(maxsize=1)
def tesseract_version() -> str | None:
    """The installed Tesseract's version ("5.3.0"), or None when it or pytesseract or pypdfium2 is missing."""
    if shutil.which("tesseract") is None:
        return None
    try:
        import pypdfium2  # noqa: F401
        import pytesseract
    except ImportError:
        return None
    try:
        return str(pytesseract.get_tesseract_version())
    except (OSError, RuntimeError, pytesseract.TesseractNotFoundError):
        return None


def ocr_enabled(settings: IngestSettings) -> bool:
    """Whether pages without text are OCR'd: ``ingest.ocr`` "on", or "auto" with Tesseract installed.

    Raises:
        RuntimeError: ``ingest.ocr`` is "on" but Tesseract (or pytesseract, pypdfium2) is not installed.
    """
    if settings.ocr == "off":
        return False
    available = tesseract_version() is not None
    if settings.ocr == "on" and not available:
        raise RuntimeError(f"ingest.ocr is 'on' but Tesseract is not installed ({INSTALL_HINT})")
    return available


def ocr_status(settings: IngestSettings) -> str:
    """One line for the ingest report: whether pages without text will be read, and with what."""
    if settings.ocr == "off":
        return "OCR: off (ingest.ocr); PDFs without a text layer are skipped"
    version = tesseract_version()
    if version is None:
        return f"OCR: not available, PDFs without a text layer are skipped ({INSTALL_HINT})"
    return f"OCR: Tesseract {version} for pages without a text layer ({settings.ocr_dpi} dpi, {settings.ocr_language})"


def needs_ocr(text: str, settings: IngestSettings) -> bool:
    """A page whose extracted text has fewer than ``ingest.ocr_below_chars`` visible characters."""
    return len(re.sub(r"\s+", "", text)) < settings.ocr_below_chars


def ocr_pages(data: bytes, indices: Sequence[int], settings: IngestSettings) -> list[str]:
    """The text Tesseract reads on the pages at ``indices`` (0-based) of the PDF ``data``, in order."""
    import pypdfium2
    import pytesseract

    document = pypdfium2.PdfDocument(data)
    try:
        texts = []
        for index in indices:
            page = document[index]
            try:
                image = page.render(scale=settings.ocr_dpi / 72, grayscale=True).to_pil()
            finally:
                page.close()
            texts.append(pytesseract.image_to_string(image, lang=settings.ocr_language))
        return texts
    finally:
        document.close()
