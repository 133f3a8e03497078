"""rag-serve: answer questions about an index over HTTP (JSON, server-sent events, OpenAI-compatible)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from rag.errors import EXIT_CODES, ExitCode, RagError, error_message, exit_code

EPILOG = """\
examples:
  rag-serve                                   serve ./rag-index on 127.0.0.1:8000
  rag-serve --index /data/reports --port 9000
  RAG_API__API_KEY=secret rag-serve --host 0.0.0.0   other machines need 'Authorization: Bearer secret'

  curl -s localhost:8000/v1/query -H 'content-type: application/json' -d '{"question": "Who founded Normandy?"}'
  curl -N localhost:8000/v1/query -H 'content-type: application/json' -d '{"question": "...", "stream": true}'
  OpenAI clients: base_url="http://localhost:8000/v1", model "rag" or a collection's name.
  Browser: http://localhost:8000/ is a page to ask, follow citations to the PDF page and manage documents.
  rag-serve --log-format json                 one JSON object per log line; a 'question' line per question
  curl -s localhost:8000/metrics              Prometheus metrics (behind the key; RAG_API__PUBLIC_METRICS=true)
  RAG_GENERATION__BACKEND=openai RAG_GENERATION__OPENAI__BASE_URL=http://gpu-box:8000/v1 rag-serve
                                              generate on an OpenAI-compatible server (vLLM, TGI, Ollama, ...)

Settings come from RAG_* environment variables (see README); the options here override them.
A host other than 127.0.0.1/localhost/::1 is refused unless RAG_API__API_KEY is set (exit 2). A missing index
(say, a mistyped --index) or one built with another embedder is refused (exit 3); --create-index starts on an
empty one. The models are found (and the packaged generator converted, once) before the server binds: a missing
one exits 4.

--index is the root of the collections: its own index is the collection 'default', the others (made by
`rag-ingest DOCS_DIR --collection NAME` or an upload to ?collection=NAME) live in <index>/collections/NAME/ and
open on first use. Requests choose one: ?collection= on the document routes, "collection" in /v1/query, "model"
in /v1/chat/completions (GET /v1/models lists them). Browser front ends on other origins need
RAG_API__CORS_ORIGINS='["http://localhost:3000"]'.

""" + EXIT_CODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag-serve", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", help="address to bind (default: settings api.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default: settings api.port, 8000)")
    parser.add_argument("--index", type=Path, help="index folder (default: settings index.path, ./rag-index)")
    parser.add_argument(
        "--create-index", action="store_true",
        help="start on an empty index when none exists at --index (to fill it through POST /v1/documents)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format", default="text", choices=["text", "json"],
        help="json: one JSON object per line (time, level, logger, message, request_id, fields), for log "
        "collectors; every question also writes one 'question' line on the rag.questions logger",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from api.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    from rag.settings import Settings

    overrides: dict = {}
    api = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if api:
        overrides["api"] = api
    if args.index is not None:
        overrides["index"] = {"path": args.index}
    try:
        settings = Settings().with_overrides(overrides)  # validated: insecure binds are refused
        # the index before any model: a mistyped --index must not serve an empty index
        check_index(settings, create=args.create_index)
        _find_models(settings)
    except (RagError, ValidationError) as exc:
        print(f"rag-serve: error: {error_message(exc)}", file=sys.stderr)
        return exit_code(exc)
    import uvicorn

    from api.app import create_app
    from rag.runtime import quiet_libraries

    quiet_libraries()

    # log_config=None: uvicorn's loggers propagate to the root handler set above (text or JSON alike)
    uvicorn.run(
        create_app(settings), host=settings.api.host, port=settings.api.port, log_level=args.log_level,
        log_config=None,
    )
    return ExitCode.OK


def _find_models(settings) -> None:
    """ModelUnavailable now, with the fix, rather than a failed start-up inside the server."""
    from rag.models import resolve_embedder, resolve_generator, select_device

    select_device(settings.models)
    resolve_embedder(settings.models)
    if settings.generation.backend != "openai":  # an external server holds its own model
        resolve_generator(settings.models)


def check_index(settings, create: bool) -> None:
    """IndexMissing when there is no index (unless ``create``), IndexIncompatible when it was built with another
    embedder than the configured one."""
    from rag.indexing.index import DocumentIndex, STORE_FILE

    if create and not (settings.index.path / STORE_FILE).exists():
        return
    index = DocumentIndex.open(settings.index.path, settings.index)
    try:
        index.check_embedder(settings.models.embedder)
    finally:
        index.close()


if __name__ == "__main__":
    sys.exit(main())
