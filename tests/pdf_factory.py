"""Real PDF files, good and broken, written on demand for tests.

Every function writes one file at ``path`` and returns that path. The text PDFs are built with pypdf alone
(a blank page, the standard Helvetica font and a hand-written content stream), so no reportlab is needed;
the image-only PDF is rendered with Pillow and has no text layer at all.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

from pypdf import PdfReader, PdfWriter
from pypdf.generic import ArrayObject, DecodedStreamObject, DictionaryObject, NameObject, NumberObject

PAGE_WIDTH, PAGE_HEIGHT = 612, 792  # US Letter, in points
_LINE_CHARS = 90  # Helvetica 11 pt fits about this many characters between 72 pt margins
_FONT_SIZE, _LEADING = 11, 14


def _pdf_string(text: str) -> bytes:
    """A PDF literal string ``(...)`` in WinAnsi (cp1252) with backslash and parentheses escaped."""
    raw = text.encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _content_stream(text: str) -> bytes:
    """Drawing operators that show ``text`` as wrapped lines from the top-left margin down."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines.extend(textwrap.wrap(paragraph, _LINE_CHARS) or [""])
    ops = [b"BT", b"/F1 %d Tf" % _FONT_SIZE, b"%d TL" % _LEADING, b"72 720 Td"]
    for line in lines:
        ops.append(_pdf_string(line) + b" Tj T*")
    ops.append(b"ET")
    return b"\n".join(ops)


def text_pdf(path: Path, pages: list[str]) -> Path:
    """A genuine PDF with a text layer: page ``i`` shows ``pages[i]`` (long text is wrapped)."""
    return _write_text_pdf(path, pages, broken=())


def broken_page_pdf(path: Path, pages: list[str], broken: set[int]) -> Path:
    """Like ``text_pdf``, but the 1-based pages in ``broken`` have a content stream pypdf cannot decode.

    Their stream names a filter that does not exist, so ``page.extract_text()`` raises for those pages only.
    """
    return _write_text_pdf(path, pages, broken=broken)


def _write_text_pdf(path: Path, pages: list[str], broken: set[int] | tuple[()]) -> Path:
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
            NameObject("/Encoding"): NameObject("/WinAnsiEncoding"),
        }
    )
    for number, text in enumerate(pages, start=1):
        page = writer.add_blank_page(PAGE_WIDTH, PAGE_HEIGHT)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(_content_stream(text))
        if number in broken:
            stream[NameObject("/Filter")] = NameObject("/NoSuchDecode")
        page.replace_contents(stream)
    writer.write(path)
    return path


def truncated_pdf(path: Path, source: Path, fraction: float = 0.4) -> Path:
    """The first ``fraction`` of the bytes of a real PDF, as a download cut short would leave it."""
    data = Path(source).read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def encrypted_pdf(path: Path, source: Path, user_password: str = "secret", algorithm: str = "AES-256") -> Path:
    """A copy of ``source`` that needs ``user_password`` to open."""
    writer = PdfWriter(clone_from=PdfReader(source))
    writer.encrypt(user_password=user_password, owner_password="owner-" + user_password, algorithm=algorithm)
    writer.write(path)
    return path


def owner_only_encrypted_pdf(path: Path, source: Path, algorithm: str = "AES-128") -> Path:
    """A copy of ``source`` encrypted with an owner password only: it opens with the empty user password."""
    writer = PdfWriter(clone_from=PdfReader(source))
    writer.encrypt(user_password="", owner_password="owner-secret", algorithm=algorithm)
    writer.write(path)
    return path


def empty_pdf(path: Path) -> Path:
    """A valid PDF with zero pages."""
    PdfWriter().write(path)
    return path


def not_a_pdf(path: Path) -> Path:
    """An HTML error page saved under a .pdf name, as a failed download often is."""
    path.write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
        "<body><h1>Not Found</h1><p>The requested report.pdf was not found.</p></body></html>\n",
        encoding="utf-8",
    )
    return path


def zero_byte_pdf(path: Path) -> Path:
    """An empty file named .pdf."""
    path.write_bytes(b"")
    return path


def image_only_pdf(path: Path, pages: int = 2) -> Path:
    """A scanned-looking PDF: text drawn as pixels on each page, no text layer."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - only this helper needs Pillow

    images = []
    for number in range(1, pages + 1):
        image = Image.new("RGB", (850, 1100), "white")
        draw = ImageDraw.Draw(image)
        for row in range(20):
            draw.text((80, 80 + 40 * row), f"Scanned page {number}, line {row + 1}: no text layer here.", fill="black")
        images.append(image)
    images[0].save(path, "PDF", resolution=100.0, save_all=True, append_images=images[1:])
    return path


def garbage_pdf(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """A %PDF-1.7 header followed by random bytes (seeded, so a failure reproduces)."""
    path.write_bytes(b"%PDF-1.7\n" + random.Random(seed).randbytes(size))
    return path


def large_array_pdf(path: Path, pages: list[str], elements: int = 150_000) -> Path:
    """A text PDF whose first page carries an array of ``elements`` numbers.

    pypdf 7 refuses arrays above 100,000 elements by default; real SEC filings (MSFT 10-Qs) have one of about
    110,000 in their structure tree, so this is the small stand-in for them.
    """
    writer = PdfWriter(clone_from=PdfReader(text_pdf(path, pages)))
    writer.pages[0][NameObject("/RagTestArray")] = ArrayObject(NumberObject(i % 10) for i in range(elements))
    writer.write(path)
    return path


def image_only_copy(source: Path, path: Path, pages: list[int], dpi: int = 150) -> Path:
    """A scan of real pages: ``pages`` (1-based) of ``source`` rendered to images (pypdfium2) and written as an
    image-only PDF (Pillow), so no text layer is left, as from a scanner or a fax."""
    import pypdfium2  # noqa: PLC0415 - only this helper renders pages

    document = pypdfium2.PdfDocument(str(source))
    try:
        images = [document[number - 1].render(scale=dpi / 72, grayscale=True).to_pil().convert("RGB")
                  for number in pages]
    finally:
        document.close()
    images[0].save(path, "PDF", resolution=float(dpi), save_all=True, append_images=images[1:])
    return path
