"""grounded-rag: question answering over PDFs that cites the page, or says the documents do not answer.

The map (one subpackage per stage; docs/architecture.md draws it):

    ingestion/   PDF -> pages -> chunks      pdf_parsing, parse_pool, chunking, ingestor; documents (the service)
    indexing/    chunks -> vectors -> index  embedding, vector_index (FAISS), store (SQLite), index (both, atomic)
    answering/   question -> answer          retrieval (dense + BM25), evidence, prompting, verification,
                                             confidence; service (AnswerService: gate, generate, verify, cite)
    generation/  prompt -> tokens            base (the Generator protocol), backends (generation.backend):
                                             ctranslate2_backend (int8 engine), transformers_backend,
                                             openai_client (external server); batching (one worker, admission)
    evaluation/  sets -> scored report       dataset, metrics, evaluator, pipelines, sweep, report, run
    settings     one validated Settings root (RAG_* environment variables)
    runtime      the composition root: Runtime(settings).start() builds every part
    models, types, errors, text, files, machine: shared core

The front ends are thin: ``ingest/`` (rag-ingest), ``api/`` (rag-serve, rag-ask) and ``evals/`` (rag-eval).

    from rag import Runtime, Settings
    with Runtime(Settings()).start() as runtime:
        answer = asyncio.run(runtime.answers.answer("What company developed the steam engine indicator?"))

The names below are imported on first use, so ``import rag`` loads neither torch nor faiss.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Settings": "rag.settings",
    "Runtime": "rag.runtime",
    "AnswerService": "rag.answering.service",
    "DocumentService": "rag.ingestion.documents",
    "Answer": "rag.types",
    "Citation": "rag.types",
    "Chunk": "rag.types",
    "Passage": "rag.types",
    "IngestReport": "rag.types",
    "RagError": "rag.errors",
    "ExitCode": "rag.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from rag.answering.service import AnswerService
    from rag.errors import ExitCode, RagError
    from rag.ingestion.documents import DocumentService
    from rag.runtime import Runtime
    from rag.settings import Settings
    from rag.types import Answer, Chunk, Citation, IngestReport, Passage


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rag' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
