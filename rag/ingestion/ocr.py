"""Text for pages without a text layer: the page rendered (pypdfium2) and read by Tesseract (tesserocr).

A scanned contract, a fax, a photographed page: pypdf finds no text on them, and without OCR the document is
reported as image-only and skipped. With ``ingest.ocr`` on ("auto": wherever Tesseract is installed), each page
whose extracted text is (nearly) empty is rendered at ``ingest.ocr_dpi`` in grey and read by Tesseract; pages
with a text layer are never OCR'd, so a born-digital PDF costs nothing more.

tesserocr over pytesseract, by the prototype's figures (docs/benchmarks.md, "OCR"; 2-core CPU shared with other jobs,
four real pages at 200 dpi): the same character error rate (0.000, 0.001, 0.020/0.022, 0.417/0.341) at 0.5-1.5 s a
page in process against 3.7-19 s through pytesseract. pytesseract starts Debian's ``tesseract`` program per page,
and that build runs OpenMP threads that spin against each other and every other job on two busy cores; the
tesserocr wheel links its own libtesseract (5.5.4, no OpenMP) and needs only the language data Debian's
``tesseract-ocr-eng`` installs (found through TESSDATA_PREFIX or the usual system folders).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from functools import lru_cache

from rag.settings import IngestSettings

INSTALL_HINT = "apt-get install tesseract-ocr tesseract-ocr-eng, then pip install -e '.[ocr]'"
# Where distributions put Tesseract's language data (Debian/Ubuntu 5.x and 4.x, Fedora, a source build).
TESSDATA_GLOBS = ("/usr/share/tesseract-ocr/*/tessdata", "/usr/share/tesseract-ocr/tessdata", "/usr/share/tessdata",
                  "/usr/local/share/tessdata")


@lru_cache(maxsize=1)
def tessdata_dir() -> str | None:
    """The folder holding Tesseract's ``*.traineddata``: TESSDATA_PREFIX where set, else the newest system one."""
    candidates = [os.environ["TESSDATA_PREFIX"]] if os.environ.get("TESSDATA_PREFIX") else []
    for pattern in TESSDATA_GLOBS:
        candidates += sorted(glob.glob(pattern), reverse=True)
    for folder in candidates:
        if glob.glob(os.path.join(folder, "*.traineddata")):
            return folder.rstrip("/") + "/"  # libtesseract joins the language file name to it as is
    return None


@lru_cache(maxsize=1)
def tesseract_version() -> str | None:
    """Tesseract's version ("5.5.4"), or None when tesserocr, pypdfium2 or the language data is missing."""
    try:
        import pypdfium2  # noqa: F401
        import tesserocr
    except ImportError:
        return None
    if tessdata_dir() is None:
        return None
    first_line = tesserocr.tesseract_version().split()  # "tesseract 5.5.4\n leptonica-1.87.0 ..."
    return first_line[1] if len(first_line) > 1 else "unknown"


def ocr_enabled(settings: IngestSettings) -> bool:
    """Whether pages without text are OCR'd: ``ingest.ocr`` "on", or "auto" with Tesseract installed.

    Raises:
        RuntimeError: ``ingest.ocr`` is "on" but Tesseract (tesserocr, pypdfium2 or the language data) is not installed.
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


def as_text_layer(text: str) -> str:
    """Tesseract's text laid out as pypdf lays out a text page: a line per line, no blank line between blocks.

    Tesseract ends every block with a blank line; the chunker cuts at blank lines first, so a scan's chunks ended
    at each paragraph (squad2-dev's 49 pages: 257 chunks of 656 characters on average against the text original's
    225 of 814). Shorter chunks match a question more closely, and the confidence model, fitted on text PDFs, read
    that as evidence: on scans it answered unanswerable questions the text original declined.
    """
    return re.sub(r"\n[ \t]*\n+", "\n", text)


def ocr_pages(data: bytes, indices: Sequence[int], settings: IngestSettings) -> list[str]:
    """The text Tesseract reads on the pages at ``indices`` (0-based) of the PDF ``data``, in order.

    Raises:
        RuntimeError: the language data for ``ingest.ocr_language`` is not installed.
    """
    import pypdfium2
    import tesserocr

    try:  # one engine per call: a PyTessBaseAPI is not shared between threads
        engine = tesserocr.PyTessBaseAPI(path=tessdata_dir(), lang=settings.ocr_language)
    except RuntimeError as exc:
        raise RuntimeError(f"Tesseract cannot load language {settings.ocr_language!r} from {tessdata_dir()} "
                           f"(apt-get install tesseract-ocr-<lang>): {exc}") from exc
    document = pypdfium2.PdfDocument(data)
    try:
        texts = []
        for index in indices:
            page = document[index]
            try:
                image = page.render(scale=settings.ocr_dpi / 72, grayscale=True).to_pil()
            finally:
                page.close()
            engine.SetImage(image)
            texts.append(as_text_layer(engine.GetUTF8Text()))
        return texts
    finally:
        document.close()
        engine.End()
