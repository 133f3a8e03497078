"""A generated corpus of malformed and odd folder entries mixed with good PDFs, for the ingest campaign.

``build(folder, good)`` writes it and returns what an ingest must do with each entry: ``bad`` maps the stored
name of every entry that must be reported to a word its reason must contain; ``good`` lists the stored names
that must be ingested. Everything is made here from one real PDF (``good``), pypdf and a few bytes, so the
corpus can be rebuilt anywhere (tests, or ``python -m tests.malformed_corpus DIR GOOD.pdf`` to look at it).
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tests import pdf_factory

# Raw bytes of a name that is not UTF-8: Python keeps it as a lone surrogate ("bad\udcff.pdf").
NON_UTF8_NAME = os.fsdecode(b"bad\xff-name.pdf")
LONG_NAME = "long-" + "n" * 240 + ".pdf"  # 249 bytes: under the usual 255-byte limit of a file name


@dataclass
class Corpus:
    bad: dict[str, str] = field(default_factory=dict)  # stored name -> a word the reported reason contains
    good: set[str] = field(default_factory=set)  # stored names that must be ingested

    @property
    def kinds(self) -> int:
        return len(self.bad) + len(self.good)


def display(name: str) -> str:
    """How a report names an entry (non-UTF-8 bytes as \\xNN escapes)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def text_bomb(path: Path, repeats: int = 10_000) -> Path:
    """A small PDF whose one compressed content stream shows the same line ``repeats`` times: a few KiB on
    disk, over a million characters of extracted text."""
    line = b"(" + b"All work and no play makes a bomb of text. " + b") Tj T*\n"
    content = b"BT /F1 11 Tf 14 TL 72 720 Td\n" + line * repeats + b"ET"
    return _one_page_pdf(path, zlib.compress(content, 9), b"/Filter /FlateDecode")


def _one_page_pdf(path: Path, stream: bytes, stream_keys: bytes = b"", contents_ref: bytes = b"4 0 R") -> Path:
    """A hand-written one-page PDF with a correct xref table, around one content stream."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents " + contents_ref
        + b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" " + stream_keys + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def build(folder: Path, good: Path, *, special_files: bool = True) -> Corpus:
    """Write the corpus into ``folder`` (created); ``good`` is a real text PDF. ``special_files`` adds the FIFO
    and the socket (skip them where the file system cannot hold them)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    c = Corpus()

    def ok(name: str) -> Path:
        c.good.add(name)
        return folder / name

    def bad(name: str, word: str) -> Path:
        c.bad[display(name)] = word
        return folder / name

    # --- good and odd-but-good entries ---------------------------------------------------------------
    shutil.copy(good, ok("good.pdf"))
    shutil.copy(good, ok("UPPER.PDF"))
    shutil.copy(good, ok("r\u00e9sum\u00e9 \u00fcber caf\u00e9.pdf"))
    shutil.copy(good, ok(".hidden.pdf"))
    shutil.copy(good, ok("new\nline.pdf"))
    shutil.copy(good, ok(LONG_NAME))
    (folder / "deep" / "er" / "est").mkdir(parents=True)
    shutil.copy(good, ok("deep/er/est/nested.pdf"))
    (folder / "link-to-good.pdf").symlink_to("good.pdf")
    c.good.add("link-to-good.pdf")
    pdf_factory.owner_only_encrypted_pdf(ok("owner-only-encrypted.pdf"), good)
    pdf_factory.large_array_pdf(ok("large-array.pdf"), ["A page of text about lighthouses and their keepers."])
    pdf_factory.broken_page_pdf(ok("some-pages-broken.pdf"), ["Page one text.", "Page two text.", "Page three."], {2})
    shutil.copy(good, ok("not-really.pdf.pdf"))

    # --- bad bytes -------------------------------------------------------------------------------------
    pdf_factory.truncated_pdf(bad("truncated-40.pdf", "corrupt"), good, 0.4)
    pdf_factory.truncated_pdf(bad("truncated-5.pdf", "corrupt"), good, 0.05)
    pdf_factory.encrypted_pdf(bad("encrypted-aes256.pdf", "password"), good)
    pdf_factory.encrypted_pdf(bad("encrypted-rc4.pdf", "password"), good, algorithm="RC4-128")
    pdf_factory.empty_pdf(bad("no-pages.pdf", "no pages"))
    pdf_factory.not_a_pdf(bad("html.pdf", "not a PDF"))
    pdf_factory.zero_byte_pdf(bad("zero-bytes.pdf", "empty file"))
    pdf_factory.image_only_pdf(bad("scanned.pdf", "no text layer"))
    pdf_factory.garbage_pdf(bad("garbage.pdf", "corrupt"))
    pdf_factory.garbage_pdf(bad("garbage-64k.pdf", "corrupt"), size=65536, seed=1)
    bad("header-only.pdf", "corrupt").write_bytes(b"%PDF-1.7\n")
    bad("header-too-late.pdf", "not a PDF").write_bytes(b"\n" * 2048 + data)
    bad("png.pdf", "not a PDF").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    bad("zip.pdf", "not a PDF").write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    bad("gzip.pdf", "not a PDF").write_bytes(gzip.compress(data))
    bad("plain-text.pdf", "not a PDF").write_text("Just some text saved as .pdf\n" * 20, encoding="utf-8")
    bad("utf16.pdf", "not a PDF").write_bytes("%PDF-1.7 in UTF-16".encode("utf-16"))
    pdf_factory.text_pdf(bad("blank-pages.pdf", "no text layer"), ["", "   ", ""])
    pdf_factory.broken_page_pdf(bad("every-page-broken.pdf", "corrupt"), ["One.", "Two."], {1, 2})
    _one_page_pdf(bad("missing-contents.pdf", "content stream missing"), b"BT ET", contents_ref=b"9 0 R")
    bad("no-root.pdf", "corrupt").write_bytes(b"%PDF-1.4\ntrailer\n<< >>\n%%EOF\n")
    bad("deep-nesting.pdf", "corrupt").write_bytes(
        b"%PDF-1.4\n1 0 obj\n" + b"[" * 20_000 + b"]" * 20_000 + b"\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )
    text_bomb(bad("text-bomb.pdf", "too much text"))
    # Undecodable stream data: pypdf reads the page as empty, so the file is reported as having no text layer.
    _one_page_pdf(bad("bad-stream-filter.pdf", "no text layer"), b"x" * 64, b"/Filter /FlateDecode")

    # --- names and entries that are not regular files ------------------------------------------------------
    shutil.copy(good, bad(NON_UTF8_NAME, "UTF-8"))
    (folder / "dangling.pdf").symlink_to("does-not-exist.pdf")
    c.bad["dangling.pdf"] = "broken symbolic link"
    (folder / "loop-a.pdf").symlink_to("loop-b.pdf")
    (folder / "loop-b.pdf").symlink_to("loop-a.pdf")
    (folder / "self-loop.pdf").symlink_to("self-loop.pdf")
    c.bad.update({"loop-a.pdf": "loop", "loop-b.pdf": "loop", "self-loop.pdf": "loop"})
    (folder / "folder.pdf").mkdir()
    c.bad["folder.pdf"] = "folder"
    shutil.copy(good, ok("folder.pdf/inside.pdf"))
    (folder / "linked-folder.pdf").symlink_to("deep", target_is_directory=True)
    c.bad["linked-folder.pdf"] = "folder"
    if special_files:
        os.mkfifo(folder / "fifo.pdf")
        c.bad["fifo.pdf"] = "FIFO"
        with socket.socket(socket.AF_UNIX) as sock:  # bound, then closed: the socket file stays
            sock.bind(str(folder / "socket.pdf"))
        c.bad["socket.pdf"] = "socket"
    # Entries not named like PDFs are not ours to report.
    (folder / "notes.txt").write_text("not a pdf, not reported", encoding="utf-8")
    return c


if __name__ == "__main__":
    built = build(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{built.kinds} entries: {len(built.bad)} bad, {len(built.good)} good")
