"""Our own types at the boundaries between stages, the API and the evals.

LangChain, FAISS and transformers objects stay inside their adapters; everything that crosses a module
boundary is one of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Page:
    """Text extracted from one page; ``number`` is 1-based."""

    number: int
    text: str


@dataclass(frozen=True)
class ParsedDocument:
    """A PDF read page by page."""

    path: Path
    content_hash: str  # sha256 of the file bytes
    pages: tuple[Page, ...]
    ocr_pages: int = 0  # pages whose text Tesseract read (no text layer)
    table_pages: int = 0  # pages whose table rows were written with their headers (rag.ingestion.tables)


@dataclass(frozen=True)
class PageRange:
    """The text of pages ``start`` .. ``start + len(texts) - 1`` (0-based) of one PDF, as a worker returns it.

    ``failures`` are the 1-based pages whose extraction threw (kept as ""), with the error; ``page_count`` is
    the whole file's; ``content_hash`` lets the ranges of one file be checked to come from the same bytes.
    """

    start: int
    texts: tuple[str, ...]
    failures: tuple[tuple[int, str], ...]
    page_count: int
    content_hash: str
    ocr_pages: tuple[int, ...] = ()  # 1-based pages of this range whose text Tesseract read
    table_pages: tuple[int, ...] = ()  # 1-based pages of this range whose table rows carry their headers


@dataclass(frozen=True)
class Chunk:
    """A passage of one document, with where it came from.

    ``char_start``/``char_end`` are offsets into the document's text as the pages joined by "\\n\\n".
    ``id`` is None until the store assigns one; the same id is the FAISS id.
    """

    document: str  # path relative to the ingested folder, POSIX separators
    content_hash: str
    page_start: int
    page_end: int
    char_start: int
    char_end: int
    text: str
    position: int  # 0-based order of the chunk within its document
    id: int | None = None


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk with its scores for one question."""

    chunk: Chunk
    score: float  # fused score used for ranking
    dense_score: float | None = None  # cosine similarity to the question, when the dense retriever saw it
    bm25_score: float | None = None


@dataclass(frozen=True)
class Citation:
    """A passage an answer used."""

    document: str
    page_start: int
    page_end: int
    snippet: str
    score: float
    chunk_id: int


@dataclass(frozen=True)
class Quote:
    """Consecutive evidence sentences of one retrieved passage: what an answer rests on, with its source."""

    text: str
    document: str
    page_start: int
    page_end: int
    chunk_id: int
    score: float  # how well its best sentence matches the question (rag.answering.evidence)


@dataclass(frozen=True)
class CalculationInput:
    """One number of a computed figure: as written in its quote, and where (no document for a unit factor)."""

    written: str
    value: float
    document: str | None = None
    page: int | None = None


@dataclass(frozen=True)
class ComputedFigure:
    """A figure the service computed from quoted ones (a ratio, a change, a sum): the formula, its result as shown
    and the inputs with their pages."""

    expression: str
    value: float
    result: str
    inputs: tuple[CalculationInput, ...]


@dataclass(frozen=True)
class Answer:
    """The outcome of one question: an answer with citations, or an abstention (no citations; the nearest
    passages in ``nearest``)."""

    text: str
    abstained: bool
    citations: tuple[Citation, ...]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    reason: str | None = None  # why it abstained, when it did
    support: float | None = None  # verification score of the answer against its cited passages
    relevance: float | None = None  # best cosine similarity of a retrieved passage to the question
    draft: str | None = None  # what the generator said, when verification turned it into an abstention
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens when generated
    quotes: tuple[Quote, ...] = ()  # the evidence sentences the answer rests on (the nearest ones on abstention)
    confidence: float | None = None  # calibrated P(the answer is right), when a calibrator is configured
    form: str | None = None  # "short" (a span) or "long" (sentences), from the question
    features: dict[str, float] = field(default_factory=dict)  # the confidence features, for evals and logs
    nearest: tuple[Citation, ...] = ()  # on an abstention: the nearest passages found (not sources)
    unquoted_figures: tuple[str, ...] = ()  # figures the answer states that its quotes and the question do not
    calculation: ComputedFigure | None = None  # a figure computed from quoted ones, when the question asks for one
    calculation_refused: str | None = None  # why the reply's calculation was not computed (an input no quote states)

    def __post_init__(self) -> None:
        # An abstention has no sources: passages handed over as its citations are the nearest ones found, and
        # clients show citations as sources. Moved here, once, so no producer of an abstention can leak them.
        if self.abstained and self.citations:
            object.__setattr__(self, "nearest", self.nearest or self.citations)
            object.__setattr__(self, "citations", ())


@dataclass(frozen=True)
class FileFailure:
    """A file the ingest skipped, and why."""

    path: str
    reason: str


@dataclass
class IngestReport:
    """What one ingest run did."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[FileFailure] = field(default_factory=list)
    pages: int = 0
    ocr_pages: int = 0  # pages without a text layer, read by Tesseract
    table_pages: int = 0  # pages whose table rows were written with their column headers
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0
