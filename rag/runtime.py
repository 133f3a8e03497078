"""The composition root: every stage built from ``Settings``, in one place.

    runtime = Runtime(settings).start()            # rag-serve, rag-ask, rag-eval: models loaded
    runtime.answers.answer("...")                  # AnswerService: retrieve, quote, generate, score, cite or abstain
    runtime.documents.upload(stream, "a.pdf")      # DocumentService: list, sync a folder, upload
    other = runtime.derive({"index": {"path": p}})  # another index, the same loaded models
    other.close(); runtime.close()

``derive`` is how tests and evals change a part without wiring stages by hand: the overrides go through
``Settings.with_overrides`` (validated), and the derived runtime shares every loaded part the change leaves
valid (models always; the index, retriever and batcher while their settings are unchanged). It closes only
what it opened itself; the runtime it came from must outlive it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.indexing.embedding import SentenceTransformerEmbedder
from rag.ingestion.ingestor import Ingestor, upload_dir
from rag.models import resolve_embedder, select_device
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.generation.batching import BatchingGenerator
    from rag.generation.base import Generator
    from rag.answering.retrieval import HybridRetriever
    from rag.answering.service import AnswerService
    from rag.answering.confidence import Calibrator
    from rag.indexing.index import DocumentIndex
    from rag.ingestion.documents import DocumentService

# Generation settings the batching worker is built with: a change in any of them needs a batcher of its own.
_BATCHER_FIELDS = ("max_batch_size", "batch_wait_ms", "queue_size")


def build_embedder(settings: Settings) -> SentenceTransformerEmbedder:
    """The embedder named by ``settings.models`` (not loaded: ``load()`` it, or let the ingestor load it)."""
    path = resolve_embedder(settings.models)
    return SentenceTransformerEmbedder(
        path, device=select_device(settings.models), batch_size=settings.ingest.embed_batch_size
    )


def build_ingestor(settings: Settings, embedder: SentenceTransformerEmbedder) -> Ingestor:
    """An Ingestor over ``embedder`` (loaded on first need when it is not loaded yet)."""
    return Ingestor(settings, embedder, embedder_id=settings.models.embedder, tokenizer_path=embedder.model_path)


class Runtime:
    """Every part the service needs, built from one Settings: index, embedder, ingestor, retriever, generator,
    batcher, confidence model, and the two services the front ends use, ``answers`` and ``documents``.

    ``start()`` loads what serving needs; ``start_ingest()`` only what an ingest needs. A part that was not
    built is None (``answers`` without the generator). ``close()`` stops and closes what this runtime opened.
    """

    def __init__(self, settings: Settings, *, embedder: SentenceTransformerEmbedder | None = None):
        """``embedder``: one to use instead of building it from ``settings.models`` (tests share one loaded
        embedder across many indexes; it must be the model ``settings.models.embedder`` names)."""
        self.settings = settings
        self.index: DocumentIndex | None = None
        self.embedder: SentenceTransformerEmbedder | None = embedder
        self.ingestor: Ingestor | None = None
        self.retriever: HybridRetriever | None = None
        self.llm: Generator | None = None  # None when started without the generator
        self.batcher: BatchingGenerator | None = None
        self.calibrator: Calibrator | None = None
        self.answers: AnswerService | None = None
        self.documents: DocumentService | None = None
        self._closers: list[Callable[[], None]] = []  # what this runtime opened, closed in reverse order

    # -- building ------------------------------------------------------------------------------------
    def start(self, with_generator: bool = True, create_index: bool = True) -> "Runtime":
        """Open the index (IndexMissing first, before any model loads, when ``create_index`` is False), load
        the embedder and the retriever, and with ``with_generator`` the generator, its batcher and the
        answer service."""
        from rag.answering.retrieval import HybridRetriever

        try:
            self._open_index(create_index)
            self.embedder = self.embedder or build_embedder(self.settings)
            if not self.embedder.loaded:
                self.embedder.load()
            # before answering from a foreign index
            self.index.check_embedder(self.settings.models.embedder, self.embedder.dim)
            self._build_documents()
            self.retriever = HybridRetriever(self.index, self.embedder, self.settings.retrieval).load()
            if with_generator:
                self._load_generator()
                self._build_answers()
        except BaseException:
            self.close()
            raise
        return self

    def start_ingest(self) -> "Runtime":
        """Open (or create) the index and build the documents service; the embedder loads only when a file
        needs embedding, so a rerun with nothing to do loads no model."""
        try:
            self._open_index(create=True)
            self.embedder = self.embedder or build_embedder(self.settings)
            self._build_documents()
        except BaseException:
            self.close()
            raise
        return self

    def derive(self, overrides: Mapping[str, Any]) -> "Runtime":
        """A runtime over ``self.settings.with_overrides(overrides)`` that shares this one's loaded models.

        The index is shared while the index settings are unchanged, the retriever while the retrieval
        settings are too (``min_relevance`` is the answer service's gate, not the retriever's), the batcher
        while its batching settings are. Model settings cannot change: that needs a new ``Runtime``.
        """
        from rag.answering.retrieval import HybridRetriever

        if self.embedder is None or self.index is None:
            raise ValueError("derive needs a started Runtime (start() or start_ingest())")
        settings = self.settings.with_overrides(overrides)
        if settings.models != self.settings.models:
            raise ValueError("a derived runtime shares the models: build a new Runtime for other models")
        derived = Runtime(settings)
        derived.embedder, derived.llm = self.embedder, self.llm
        try:
            if settings.index == self.settings.index:
                derived.index = self.index
                if self.retriever is not None and _retrieval(settings) == _retrieval(self.settings):
                    derived.retriever = self.retriever
            else:
                derived._open_index(create=True)
                # the dimension only when known (an ingest runtime loads its embedder on first need)
                derived.index.check_embedder(settings.models.embedder, derived.embedder.dim or None)
            derived._build_documents()
            if derived.retriever is None and self.retriever is not None:
                derived.retriever = HybridRetriever(derived.index, derived.embedder, settings.retrieval).load()
            if self.llm is not None:
                if _batching(settings) == _batching(self.settings):
                    derived.batcher = self.batcher
                else:
                    derived._start_batcher()
                derived._build_answers()
        except BaseException:
            derived.close()
            raise
        return derived

    def close(self) -> None:
        """Stop the batcher and close the index, when this runtime opened them (idempotent)."""
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parts ---------------------------------------------------------------------------------------
    def _open_index(self, create: bool) -> None:
        from rag.indexing.index import DocumentIndex

        self.index = DocumentIndex.open(self.settings.index.path, self.settings.index, create=create)
        self._closers.append(self.index.close)

    def _build_documents(self) -> None:
        from rag.ingestion.documents import DocumentService

        self.ingestor = build_ingestor(self.settings, self.embedder)
        uploads = upload_dir(self.settings, Path(self.settings.index.path))
        self.documents = DocumentService(self.index, self.ingestor, uploads, self.settings.api.max_upload_mb)

    def _load_generator(self) -> None:
        from rag.answering.prompting import MARKER_WORDS
        from rag.generation.backends import build_generator

        # generation.backend: the int8 engine, transformers, or an OpenAI-compatible server
        self.llm = build_generator(self.settings, probe_words=MARKER_WORDS)
        if callable(getattr(self.llm, "close", None)):
            self._closers.append(self.llm.close)
        self._start_batcher()

    def _start_batcher(self) -> None:
        from rag.generation.batching import BatchingGenerator

        self.batcher = BatchingGenerator(self.llm, self.settings.generation).start()
        self._closers.append(self.batcher.stop)

    def _build_answers(self) -> None:
        from rag.answering.service import AnswerService

        self.calibrator = load_calibrator(self.settings)
        self.answers = AnswerService(self.retriever, self.llm, self.batcher, self.settings, self.calibrator)


def load_calibrator(settings: Settings) -> "Calibrator | None":
    """The configured confidence model: the settings' file, else the packaged one; None when neither exists."""
    from rag.answering.confidence import DEFAULT_CALIBRATOR, Calibrator

    path = settings.generation.calibrator or DEFAULT_CALIBRATOR
    if settings.generation.calibrator is None and not path.exists():
        return None
    return Calibrator.load(path)


def _retrieval(settings: Settings) -> dict[str, Any]:
    return settings.retrieval.model_dump(exclude={"min_relevance"})


def _batching(settings: Settings) -> dict[str, Any]:
    return settings.generation.model_dump(include=set(_BATCHER_FIELDS))


def quiet_libraries() -> None:
    """Keep third-party progress bars and advisory warnings out of our commands' output."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    import bm25s  # noqa: F401 - imported first: it sets its own logger to DEBUG on import

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to an external generator otherwise
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

