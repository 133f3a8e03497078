"""rag-ingest: index a folder of PDFs so every chunk knows its document and page."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from pydantic import ValidationError

from rag.errors import EXIT_CODES, ExitCode, RagError, UsageError, error_message, exit_code
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

A rerun only touches what changed: unchanged files (same content hash) are skipped, changed files are
re-embedded, deleted files are removed. Settings come from RAG_* environment variables (see README).

{EXIT_CODES}"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag-ingest", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("docs_dir", type=Path, help="folder of PDFs (searched recursively)")
    parser.add_argument("--index", type=Path, help="index folder (default: settings index.path, ./rag-index)")
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
        if args.ray_address and settings.ingest.engine != "ray":
            raise UsageError("--ray-address needs --engine ray (or RAG_INGEST__ENGINE=ray)")
        report = run(settings, args.docs_dir, rebuild=args.rebuild, show_progress=not (args.quiet or args.json))
    except (RagError, ValidationError) as exc:
        print(f"rag-ingest: error: {error_message(exc)}", file=sys.stderr)
        return exit_code(exc)
    if args.json:
        print(json.dumps(report_dict(report, settings.index.path), indent=2))
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


def report_dict(report: IngestReport, index_path: Path) -> dict:
    data = asdict(report)
    data["pages_per_second"] = round(report.pages_per_second, 2)
    data["index"] = str(index_path)
    return data


def summary(report: IngestReport, index_path: Path) -> str:
    lines = [
        f"files: {report.new} new, {report.changed} changed, {report.unchanged} unchanged, "
        f"{report.removed} removed, {len(report.failed)} failed",
        f"pages: {report.pages}  chunks: +{report.chunks_added} -{report.chunks_removed} "
        f"(total {report.chunks_total})  time: {report.seconds:.1f} s  ({report.pages_per_second:.1f} pages/s)",
        f"index: {index_path}",
    ]
    lines += [f"  failed: {f.path}: {f.reason}" for f in report.failed]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
