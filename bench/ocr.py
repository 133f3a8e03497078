"""OCR speed and accuracy on real pages: pages/s and character error rate against the text layer.

Each ``--page FILE:N`` (1-based) of a real PDF is rendered to an image (pypdfium2, ``--scan-dpi``, grey) and
written as an image-only PDF, as a scanner would; the ingest's parser then reads that copy with OCR on
(``parse_pdf`` with ``ingest.ocr`` "on", at ``ingest.ocr_dpi``), timed per page. The character error rate is the
Levenshtein distance between the OCR text and the original page's pypdf text (white space collapsed), divided by
the original's length: 0 is a perfect read. Tables read in another order than pypdf's count as errors too.

    python -m bench.ocr --page "../shared/eval/squad2-dev/docs/Steam_engine.pdf:3" \\
        --page "../shared/eval/sec10q-dev/docs/2023 Q3 AAPL.pdf:4" --json bench-out/ocr.json
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import tempfile
import time
from pathlib import Path

from bench._common import machine_info, print_header, write_json

EXIT_USAGE = 2
DEFAULT_PAGES = (
    "../shared/eval/squad2-dev/docs/Steam_engine.pdf:1", "../shared/eval/squad2-dev/docs/Steam_engine.pdf:3",
    "../shared/eval/squad2-dev/docs/Normans.pdf:2", "../shared/eval/clapnq-dev/docs/416_Fire.pdf:1",
    "../shared/eval/sec10q-dev/docs/2023 Q3 AAPL.pdf:3", "../shared/eval/sec10q-dev/docs/2023 Q3 AAPL.pdf:4",
    "../shared/eval/sec10q-dev/docs/2023 Q3 NVDA.pdf:20", "../shared/eval/sec10q-dev/docs/2023 Q2 MSFT.pdf:5",
)


def parse_page(text: str) -> tuple[Path, int]:
    path, _, number = text.rpartition(":")
    if not path or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"expected FILE:PAGE (1-based), got {text!r}")
    return Path(path), int(number)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ocr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 done; 2 usage error (no Tesseract, a missing page).")
    parser.add_argument("--page", type=parse_page, action="append", help="FILE:PAGE to scan and read (repeatable; "
                        "default: eight pages of the three dev sets, prose and tables)")
    parser.add_argument("--scan-dpi", type=int, default=150, help="resolution of the simulated scan (default 150)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    pages = args.page or [parse_page(p) for p in DEFAULT_PAGES]

    import pypdf
    from rapidfuzz.distance import Levenshtein

    from rag.errors import PdfError
    from rag.ingestion.ocr import INSTALL_HINT, tesseract_version
    from rag.ingestion.pdf_parsing import parse_pdf
    from rag.settings import IngestSettings
    from tests.pdf_factory import image_only_copy

    if tesseract_version() is None:
        print(f"bench.ocr: error: Tesseract is not installed ({INSTALL_HINT})", file=sys.stderr)
        return EXIT_USAGE
    from rag.ingestion.pdf_parsing import ARRAY_LIMIT

    @functools.cache
    def original_pages(path: Path) -> list:
        """pypdf's pages of the original, read once per file with the ingest's array limit (the 10-Qs' page trees
        pass pypdf's default one)."""
        with pypdf.apply_configuration(array_maximum_element_count=ARRAY_LIMIT):
            reader = pypdf.PdfReader(path)
            return list(reader.pages)

    def original_text(path: Path, number: int) -> str:
        with pypdf.apply_configuration(array_maximum_element_count=ARRAY_LIMIT):
            return original_pages(path)[number - 1].extract_text()

    missing = [f"{p}:{n}" for p, n in pages if not p.is_file() or n > len(original_pages(p))]
    if missing:
        print(f"bench.ocr: error: no such page: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    settings = IngestSettings(ocr="on")
    info = machine_info()
    print_header("OCR of scanned pages", info)
    print(f"Tesseract {tesseract_version()}, scans at {args.scan_dpi} dpi, read at {settings.ocr_dpi} dpi "
          f"({settings.ocr_language})")
    plain = lambda text: re.sub(r"\s+", " ", text).strip()  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (path, number) in enumerate(pages):
            scan = image_only_copy(path, Path(tmp) / f"scan-{i}.pdf", [number], dpi=args.scan_dpi)
            started = time.perf_counter()
            try:
                document = parse_pdf(scan, settings)
                text, ocr_count = document.pages[0].text, document.ocr_pages
            except PdfError:  # a page with (almost) nothing on it: OCR finds no text, as pypdf found none
                text, ocr_count = "", 0
            seconds = time.perf_counter() - started
            reference = plain(original_text(path, number))
            error_rate = Levenshtein.normalized_distance(plain(text), reference)
            rows.append({"file": path.name, "page": number, "seconds": seconds, "chars": len(reference),
                         "edits": Levenshtein.distance(plain(text), reference),
                         "cer": error_rate, "ocr_pages": ocr_count})
            print(f"  {path.name} p. {number}: {seconds:.2f} s, {len(reference)} characters, CER {error_rate:.3f}",
                  flush=True)
    total = sum(r["seconds"] for r in rows)
    print(f"{len(rows)} pages in {total:.1f} s: {len(rows) / total:.2f} pages/s; median CER "
          f"{sorted(r['cer'] for r in rows)[len(rows) // 2]:.3f}, over all characters "
          f"{sum(r['edits'] for r in rows) / max(1, sum(r['chars'] for r in rows)):.3f}")
    write_json(args.json, {"benchmark": "ocr", "machine": info, "tesseract": tesseract_version(),
                           "scan_dpi": args.scan_dpi, "ocr_dpi": settings.ocr_dpi, "rows": rows,
                           "pages_per_s": len(rows) / total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
