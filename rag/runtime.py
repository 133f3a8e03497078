"""Build the stages from settings: the one place that turns configuration into loaded components."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.indexing.embedding import SentenceTransformerEmbedder
from rag.ingestion.ingestor import Ingestor
from rag.models import resolve_embedder, select_device
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.answering.service import AnswerService
    from rag.answering.batching import BatchingGenerator
    from rag.answering.generation import TransformersGenerator
    from rag.indexing.index import DocumentIndex
    from rag.answering.retrieval import HybridRetriever


def load_embedder(settings: Settings, load: bool = True) -> tuple[SentenceTransformerEmbedder, str]:
    """The embedder (weights loaded unless ``load`` is False) and the path or id it came from."""
    path = resolve_embedder(settings.models)
    embedder = SentenceTransformerEmbedder(
        path, device=select_device(settings.models), batch_size=settings.ingest.embed_batch_size
    )
    return (embedder.load() if load else embedder), path


def make_ingestor(
    settings: Settings, embedder: SentenceTransformerEmbedder | None = None, path: str | None = None
) -> Ingestor:
    """An Ingestor; without an embedder given, one is made that loads on first need."""
    if embedder is None or path is None:
        embedder, path = load_embedder(settings, load=False)
    return Ingestor(settings, embedder, embedder_id=settings.models.embedder, tokenizer_path=path)


class Runtime:
    """Everything the service needs, loaded once: index, embedder, retriever, generator, batcher, pipeline.

    ``start()`` loads the models and starts the batching worker; ``close()`` stops it and closes the index.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.index: DocumentIndex | None = None
        self.embedder: SentenceTransformerEmbedder | None = None
        self.ingestor: Ingestor | None = None
        self.retriever: HybridRetriever | None = None
        self.llm: TransformersGenerator | None = None  # None when started without the generator
        self.batcher: BatchingGenerator | None = None
        self.answers: AnswerService | None = None

    def start(self, with_generator: bool = True) -> "Runtime":
        from rag.answering.service import AnswerService
        from rag.indexing.index import DocumentIndex
        from rag.answering.retrieval import HybridRetriever
        from rag.answering.verification import Verifier

        s = self.settings
        self.index = DocumentIndex.open(s.index.path, s.index, create=True)
        self.embedder, path = load_embedder(s)
        self.index.check_embedder(s.models.embedder, self.embedder.dim)  # before answering from a foreign index
        self.ingestor = make_ingestor(s, self.embedder, path)
        self.retriever = HybridRetriever(self.index, self.embedder, s.retrieval).load()
        if with_generator:
            from rag.answering.batching import BatchingGenerator
            from rag.answering.generation import TransformersGenerator
            from rag.models import resolve_generator, select_device

            self.llm = TransformersGenerator(resolve_generator(s.models), select_device(s.models), s.generation).load()
            self.batcher = BatchingGenerator(self.llm, s.generation)
            self.batcher.start()
            verifier = (
                Verifier(judge=self.llm.yes_probability, render=self.llm.render_chat)
                if s.generation.judge else Verifier(judge=None, render=None)
            )
            self.answers = AnswerService(self.retriever, self.llm, self.batcher, verifier, s)
        return self

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        if self.index is not None:
            self.index.close()


def quiet_libraries() -> None:
    """Keep third-party progress bars and advisory warnings out of our commands' output."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    import bm25s  # noqa: F401 - imported first: it sets its own logger to DEBUG on import

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
