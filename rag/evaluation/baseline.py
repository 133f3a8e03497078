"""The baseline: the RAG a user builds by following the LangChain docs, on our embedder and generator.

PyPDFLoader per PDF, ``RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)``, the same MiniLM
embeddings, ``FAISS.from_documents``, the top 4 chunks as context (the top 10 are kept for recall@k), and a
plain prompt through the same generator and batcher. No relevance gate, no verification: an answer counts as
an abstention only when its text says so (``rag.answering.prompting.is_abstention``). Its citations are the 4 chunks it
was given. LangChain objects stay in this module: the pipeline returns our ``Answer``.

The FAISS store is cached on disk per set (``save_local``/``load_local``) beside a fingerprint of the PDFs
and the chunking; it is rebuilt when either changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from rag.indexing.embedding import Embedder
from rag.evaluation.records import Retrieved
from rag.ingestion.pdf_parsing import sha256_file
from rag.answering.prompting import is_abstention
from rag.types import Answer, Citation

if TYPE_CHECKING:
    from langchain_community.vectorstores import FAISS

    from rag.generation.batching import BatchingGenerator
    from rag.runtime import Runtime
    from rag.generation.base import Generator

PROMPT = "Answer the question based only on the following context:\n{context}\n\nQuestion: {question}"
CHUNK_SIZE = 1000  # characters, as in the LangChain RAG tutorial
CHUNK_OVERLAP = 200
CONTEXT_K = 4  # chunks in the prompt: the vector store retriever's default
RETRIEVE_K = 10  # chunks kept for recall@k
SNIPPET_CHARS = 300
_FINGERPRINT = "baseline.json"
_FORMAT = 1  # bump when the cached store's layout or content changes

log = logging.getLogger(__name__)


@contextmanager
def _quiet_langchain_community() -> Iterator[None]:
    # langchain-community warns on import that it is being sunset; the baseline uses it on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*langchain-community.*", category=DeprecationWarning)
        yield


class EmbedderAdapter(Embeddings):
    """Our loaded sentence-transformers embedder as LangChain ``Embeddings`` (unit-length MiniLM vectors,
    as ``HuggingFaceEmbeddings`` gives for this model, whose pipeline ends in a Normalize module)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed_documents(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text).tolist()


def load_pages(docs_dir: Path) -> list[Document]:
    """One LangChain Document per PDF page (``PyPDFLoader``); ``metadata["page"]`` is 0-based.

    A file PyPDFLoader cannot read is skipped with a warning (the LangChain docs' loop would stop there):
    with pypdf 7.1's default limits it cannot open 2 of the 20 sec10q-dev filings ("Reached maximum array
    element count"), and the baseline then answers without them.
    """
    with _quiet_langchain_community():
        from langchain_community.document_loaders import PyPDFLoader

        pages: list[Document] = []
        for path in sorted(Path(docs_dir).glob("*.pdf")):
            try:
                pages.extend(PyPDFLoader(str(path)).load())
            except Exception as exc:  # noqa: BLE001 - the baseline's own failure, reported and measured
                log.warning("baseline: PyPDFLoader cannot read %s: %s: %s", path.name, type(exc).__name__, exc)
    return pages


def split_pages(pages: list[Document]) -> list[Document]:
    """Chunks of 1000 characters with 200 overlap; each keeps its page's metadata plus a ``chunk_id``."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
    chunks = splitter.split_documents(pages)
    for chunk_id, chunk in enumerate(chunks):
        chunk.metadata["chunk_id"] = chunk_id
    return chunks


def document_name(doc: Document) -> str:
    """The PDF's file name: the basename of ``metadata["source"]``."""
    return Path(str(doc.metadata["source"])).name


def page_number(doc: Document) -> int:
    """The 1-based page of a PyPDFLoader chunk (its ``metadata["page"]`` is 0-based)."""
    return int(doc.metadata["page"]) + 1


def to_citation(doc: Document, cosine: float) -> Citation:
    """A retrieved chunk as our Citation."""
    page = page_number(doc)
    return Citation(
        document=document_name(doc), page_start=page, page_end=page, snippet=doc.page_content[:SNIPPET_CHARS],
        score=round(float(cosine), 4), chunk_id=int(doc.metadata.get("chunk_id", -1)),
    )


def open_store(docs_dir: Path, cache_dir: Path, embeddings: Embeddings, embedder_id: str) -> "FAISS":
    """The set's FAISS store from ``cache_dir``, built (and saved) first when missing or stale.

    Stale means the PDFs (by sha256), the chunking or the embedder differ from the saved fingerprint.
    """
    with _quiet_langchain_community():
        from langchain_community.vectorstores import FAISS

    cache_dir = Path(cache_dir)
    fingerprint = _fingerprint(docs_dir, embedder_id)
    try:
        saved = json.loads((cache_dir / _FINGERPRINT).read_text())
    except (OSError, ValueError):
        saved = None
    if saved == fingerprint:
        # The store is ours (written below), so unpickling its docstore is safe.
        return FAISS.load_local(str(cache_dir), embeddings, allow_dangerous_deserialization=True)

    chunks = split_pages(load_pages(docs_dir))
    if not chunks:
        raise ValueError(f"{docs_dir}: PyPDFLoader found no text in the PDFs")
    store = FAISS.from_documents(chunks, embeddings)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
    try:
        store.save_local(str(work))
        (work / _FINGERPRINT).write_text(json.dumps(fingerprint, indent=2))
        shutil.rmtree(cache_dir, ignore_errors=True)
        work.rename(cache_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return store


def _fingerprint(docs_dir: Path, embedder_id: str) -> dict[str, Any]:
    docs = {path.name: sha256_file(path) for path in sorted(Path(docs_dir).glob("*.pdf"))}
    return {
        "format": _FORMAT, "embedder": embedder_id, "chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP,
        "docs": docs,
    }


class BaselinePipeline:
    """The LangChain-docs RAG as an evaluation pipeline (see the module docstring)."""

    name = "baseline"

    def __init__(
        self, store: "FAISS", llm: "Generator", batcher: "BatchingGenerator", *,
        max_new_tokens: int, timeout_s: float, context_k: int = CONTEXT_K, retrieve_k: int = RETRIEVE_K,
    ):
        if not 1 <= context_k <= retrieve_k:
            raise ValueError(f"need 1 <= context_k <= retrieve_k, got {context_k} and {retrieve_k}")
        self.store = store
        self.llm = llm
        self.batcher = batcher
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.context_k = context_k
        self.retrieve_k = retrieve_k

    @classmethod
    def for_set(
        cls, runtime: "Runtime", docs_dir: Path, cache_dir: Path, *, max_new_tokens: int | None = None,
    ) -> "BaselinePipeline":
        """The baseline over ``docs_dir`` with the runtime's embedder, generator and batcher."""
        if runtime.llm is None or runtime.batcher is None or runtime.embedder is None:
            raise ValueError("BaselinePipeline needs a Runtime started with its generator")
        gen = runtime.settings.generation
        store = open_store(docs_dir, cache_dir, EmbedderAdapter(runtime.embedder), runtime.settings.models.embedder)
        return cls(
            store, runtime.llm, runtime.batcher, max_new_tokens=max_new_tokens or gen.max_new_tokens,
            timeout_s=gen.request_timeout_s,
        )

    def retrieve(self, question: str) -> list[tuple[Document, float]]:
        """The top ``retrieve_k`` chunks with their cosine similarity to the question, best first."""
        found = self.store.similarity_search_with_score(question, k=self.retrieve_k)
        # IndexFlatL2 returns squared L2 distances; for unit vectors cosine = 1 - d^2 / 2.
        return [(doc, 1.0 - float(distance) / 2.0) for doc, distance in found]

    async def ask(self, question: str) -> tuple[Answer | None, list[Retrieved]]:
        found = await asyncio.to_thread(self.retrieve, question)
        retrieved = [(document_name(doc), page_number(doc), page_number(doc)) for doc, _ in found]
        context_docs = found[: self.context_k]
        context = "\n\n".join(doc.page_content for doc, _ in context_docs)
        prompt = self.llm.render_chat([{"role": "user", "content": PROMPT.format(context=context, question=question)}])
        result = await self.batcher.submit(prompt, self.max_new_tokens, timeout_s=self.timeout_s)
        text = result.text.strip()
        abstained = is_abstention(text)
        answer = Answer(
            text=text, abstained=abstained, citations=tuple(to_citation(doc, cos) for doc, cos in context_docs),
            reason="the answer says the context does not hold it" if abstained else None,
            relevance=max((cos for _, cos in found), default=None),
        )
        return answer, retrieved
