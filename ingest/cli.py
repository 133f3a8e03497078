"""rag-ingest: index a folder of PDFs so every chunk knows its document and page."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from pydantic import ValidationError

from rag.collections import CollectionNotFound, check_name, collection_overrides
from rag.errors import EXIT_CODES, ExitCode, RagError, UsageError, error_message, exit_code
from rag.ingestion.ocr import INSTALL_HINT, ocr_status, tesseract_version
from rag.settings import Settings
from rag.types import IngestReport

EPILOG = f"""\
examples:
  rag-ingest samples/docs                      index the bundled sample into ./rag-index
  rag-ingest ~/reports --index /data/reports   choose where the index lives
  rag-ingest ~/reports --json > report.json    machine-readable summary
  rag-ingest ~/reports --rebuild               re-embed everything (after changing models or chunking)
  rag-ingest ~/reports --engine ray            parse, chunk and embed on a private Ray instance here
  rag-ingest /shared/reports --engine ray --ray-address auto --index /shared/index
                                               on the Ray cluster this machine belongs to (see README)
  rag-ingest ~/contracts --collection legal    a collection of its own under the same --index root
  rag-ingest --remove uploads/old.pdf          remove one document (its stored name, as GET /v1/documents
                                               lists it) and its chunks; an upload's kept file goes too
  rag-ingest --remove a.pdf --collection legal from another collection

Collections: --index is the root; without --collection the root's own index (the collection 'default') is
used, --collection NAME uses <index>/collections/NAME/ (created by the first ingest into it). Names: 1-64
lower-case letters, digits, '_' or '-', starting with a letter or digit. A folder document removed with
--remove comes back on the next ingest of its folder unless its file is gone from the folder too.

A rerun only touches what changed: unchanged files (same content hash) are skipped, changed files are
re-embedded, deleted files are removed. Settings come from RAG_* environment variables (see README).

{EXIT_CODES}"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag-ingest", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("docs_dir", type=Path, nargs="?", help="folder of PDFs (searched recursively)")
    parser.add_argument("--index", type=Path, help="index folder (default: settings index.path, ./rag-index)")
    parser.add_argument("--collection", metavar="NAME", default="default",
                        help="the collection under --index to ingest into or remove from (default: 'default')")
    parser.add_argument("--remove", metavar="DOCUMENT", action="append",
                        help="remove this stored document instead of ingesting (repeatable); exit 2 when the "
                        "collection has no such document, 3 when there is no such collection")
    parser.add_argument("--rebuild", action="store_true", help="re-embed every file, replacing the index atomically")
    parser.add_argument("--workers", type=int, help="parsing processes (default: one per core)")
    parser.add_argument("--engine", choices=["local", "ray"],
                        help="where parsing, chunking and embedding run (default: settings ingest.engine, local); "
                        "ray needs pip install -e '.[ray]'")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="with --engine ray: 'auto' (the cluster this machine is in), HOST:6379 or "
                        "ray://HOST:10001 (default: settings ingest.ray_address; none starts Ray on this machine)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rag.runtime import quiet_libraries

    quiet_libraries()
    try:
        settings = Settings().with_overrides(overrides(args))  # validated like RAG_* variables
        settings = settings.with_overrides(collection_overrides(settings, check_name(args.collection)))
        if args.remove:
            if args.docs_dir is not None or args.rebuild:
                raise UsageError("--remove takes no DOCS_DIR and no --rebuild")
            removed = remove(settings, args.remove)
        else:
            if args.docs_dir is None:
                raise UsageError("give DOCS_DIR (the folder to ingest) or --remove DOCUMENT")
            if args.ray_address and settings.ingest.engine != "ray":
                raise UsageError("--ray-address needs --engine ray (or RAG_INGEST__ENGINE=ray)")
            if settings.ingest.ocr == "on" and tesseract_version() is None:
                raise UsageError(f"ingest.ocr is 'on' but Tesseract is not installed ({INSTALL_HINT})")
            if not args.json and not args.quiet:
                print(ocr_status(settings.ingest), file=sys.stderr)
            report = run(settings, args.docs_dir, rebuild=args.rebuild, show_progress=not (args.quiet or args.json))
    except (RagError, ValidationError) as exc:
        print(f"rag-ingest: error: {error_message(exc)}", file=sys.stderr)
        return exit_code(exc)
    if args.remove:
        if args.json:
            print(json.dumps([{"document": d, "removed_chunks": n} for d, n in removed.items()], indent=2))
        else:
            for document, chunks in removed.items():
                print(f"removed {document} ({chunks} chunks) from {settings.index.path}", file=sys.stderr)
        return ExitCode.OK
    if args.json:
        print(json.dumps({**report_dict(report, settings.index.path), "ocr": ocr_status(settings.ingest)}, indent=2))
    else:
        print(summary(report, settings.index.path), file=sys.stderr)
    return ExitCode.PARTIAL if report.failed else ExitCode.OK


def overrides(args: argparse.Namespace) -> dict:
    """The settings the flags override, nested by section."""
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    values: dict = {}
    if args.index:
        values["index"] = {"path": args.index}
    ingest = {
        key: value for key, value in
        (("workers", args.workers), ("engine", args.engine), ("ray_address", args.ray_address))
        if value is not None
    }
    if ingest:
        values["ingest"] = ingest
    return values


def run(settings: Settings, docs_dir: Path, rebuild: bool = False, show_progress: bool = True) -> IngestReport:
    """Ingest ``docs_dir`` into the index named by settings; returns the report."""
    from tqdm import tqdm

    from rag.ingestion.ingestor import find_pdfs
    from rag.runtime import Runtime

    files = find_pdfs(docs_dir)  # fail on a missing or empty folder before loading any model
    if settings.ingest.engine == "ray":
        from rag.ingestion.ray_engine import import_ray

        import_ray()  # the install hint before an index folder is created
    with Runtime(settings).start_ingest() as runtime:
        with tqdm(total=len(files), unit="file", desc="ingest", disable=not show_progress, file=sys.stderr) as bar:
            return runtime.documents.sync_folder(docs_dir, rebuild=rebuild, progress=bar.update)


def remove(settings: Settings, documents: list[str]) -> dict[str, int]:
    """Remove ``documents`` from the index named by settings; chunks removed per document. Every name is checked
    before the first removal, so a typo removes nothing (DocumentNotFound); a missing index is IndexMissing."""
    from rag.indexing.index import STORE_FILE
    from rag.ingestion.documents import DocumentNotFound
    from rag.runtime import Runtime

    if not (settings.index.path / STORE_FILE).exists():  # never create an index only to find it empty
        raise CollectionNotFound(f"no index at {settings.index.path}: nothing to remove")
    with Runtime(settings).start_ingest() as runtime:  # loads no model: removing needs none
        stored = {record.path for record in runtime.documents.list()}
        unknown = [d for d in documents if d not in stored]
        if unknown:
            raise DocumentNotFound(
                f"no document {', '.join(map(repr, unknown))} in the index at {settings.index.path}; it holds "
                f"{len(stored)} documents (GET /v1/documents lists them)"
            )
        return {document: runtime.documents.remove(document) for document in dict.fromkeys(documents)}


def report_dict(report: IngestReport, index_path: Path) -> dict:
    data = asdict(report)
    data["pages_per_second"] = round(report.pages_per_second, 2)
    data["index"] = str(index_path)
    return data


def summary(report: IngestReport, index_path: Path) -> str:
    tables = f", {report.table_pages} with table rows" if report.table_pages else ""  # only with ingest.tables "rows"
    lines = [
        f"files: {report.new} new, {report.changed} changed, {report.unchanged} unchanged, "
        f"{report.removed} removed, {len(report.failed)} failed",
        f"pages: {report.pages} ({report.ocr_pages} read by OCR{tables})  "
        f"chunks: +{report.chunks_added} -{report.chunks_removed} "
        f"(total {report.chunks_total})  time: {report.seconds:.1f} s  ({report.pages_per_second:.1f} pages/s)",
        f"index: {index_path}",
    ]
    lines += [f"  failed: {f.path}: {f.reason}" for f in report.failed]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
