"""Parse and chunk PDFs, in worker processes when there are several; long PDFs are split into page ranges.

One task per file would leave a pool waiting on its longest file (a 2,400-page manual parses for minutes on
one core while the others idle), so a worker that opens a file longer than ``ingest.pages_per_task`` pages
extracts only the first range and hands the page count back; the other ranges are queued as tasks of their
own, and once every range is in, one more task joins the pages and chunks the whole document (chunks cross
page boundaries, so chunking stays per document and does not depend on how the pages were split).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from rag.ingestion.chunking import Chunker
from rag.errors import PdfError
from rag.ingestion.pdf_parsing import LastOpenPdf, assemble_document, guarded, parse_pdf
from rag.settings import Settings
from rag.types import Chunk, FileFailure, PageRange


@dataclass(frozen=True)
class ParsedFile:
    """One PDF parsed and chunked, not yet embedded; ``name`` is the name it is stored under."""

    name: str
    content_hash: str
    pages: int
    size_bytes: int
    chunks: list[Chunk]
    ocr_pages: int = 0  # pages whose text Tesseract read
    table_pages: int = 0  # pages whose table rows carry their headers


def parse_files(
    files: list[tuple[str, Path]], tokenizer_path: str, settings: Settings, workers: int,
) -> Iterator[ParsedFile | FileFailure]:
    """Parse and chunk ``files`` (stored name, path); yields one result per file, in completion order.

    ``workers`` <= 1 parses in this process, one file after another.
    """
    if workers <= 1 or not files:
        chunker = Chunker(tokenizer_path, settings.chunking).load()
        for name, path in files:
            yield guarded(name, lambda: chunk_parsed(chunker, name, path, parse_pdf(path, settings.ingest)))
        return
    # Largest files first, so that their ranges are queued early and no big file finishes last.
    ordered = sorted(files, key=lambda f: f[1].stat().st_size, reverse=True)
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(tokenizer_path, settings),
    ) as pool:
        yield from _Scheduler(pool, settings.ingest.pages_per_task).run(ordered)


@dataclass
class _Assembly:
    """The page ranges of one long file as they come back from the workers."""

    path: Path
    content_hash: str
    page_count: int
    parts: list[PageRange] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return sum(len(part.texts) for part in self.parts) == self.page_count


class _Scheduler:
    """Submits first-range tasks, fans long files out into range tasks, then a chunk task per long file."""

    def __init__(self, pool: ProcessPoolExecutor, pages_per_task: int):
        self.pool = pool
        self.pages_per_task = pages_per_task
        self.pending: dict[Future, str] = {}  # future -> stored name of the file it works on
        self.assemblies: dict[str, _Assembly] = {}
        self.failed: set[str] = set()
        self.paths: dict[str, Path] = {}

    def run(self, files: list[tuple[str, Path]]) -> Iterator[ParsedFile | FileFailure]:
        self.paths = dict(files)
        for name, path in files:
            self._submit(name, _worker_first, name, path, self.pages_per_task)
        while self.pending:
            done, _ = wait(self.pending, return_when=FIRST_COMPLETED)
            for future in done:
                name = self.pending.pop(future)
                if name in self.failed:
                    continue  # another range of this file already failed
                result = future.result()
                if isinstance(result, PageRange):
                    self._add_range(name, result)
                    continue
                if isinstance(result, FileFailure):
                    self.failed.add(name)
                    self.assemblies.pop(name, None)
                yield result

    def _submit(self, name: str, fn, *args) -> None:
        self.pending[self.pool.submit(fn, *args)] = name

    def _add_range(self, name: str, part: PageRange) -> None:
        assembly = self.assemblies.get(name)
        if assembly is None:  # the first range: queue the rest of the file
            path = self.paths[name]
            assembly = self.assemblies[name] = _Assembly(path, part.content_hash, part.page_count)
            for start in range(part.start + len(part.texts), part.page_count, self.pages_per_task):
                self._submit(name, _worker_range, name, path, start, start + self.pages_per_task)
        assembly.parts.append(part)
        if assembly.complete:
            del self.assemblies[name]
            self._submit(name, _worker_chunk, name, assembly.path, assembly.content_hash, assembly.parts)


# -- worker side: one chunker and the settings per process, made by the pool initializer -------------------
_worker_state: dict = {}


PARENT_POLL_SECONDS = 0.5


def _worker_init(tokenizer_path: str, settings: Settings) -> None:
    # A SIGKILLed ingest cannot shut its pool down, and a worker blocked on its task queue would wait forever
    # (keeping the resource tracker alive too): each worker leaves as soon as its parent is gone.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    _worker_state["chunker"] = Chunker(tokenizer_path, settings.chunking).load()
    _worker_state["settings"] = settings
    _worker_state["open"] = LastOpenPdf(settings.ingest)  # the ranges of a file are queued together


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _worker_first(name: str, path: Path, pages_per_task: int) -> ParsedFile | PageRange | FileFailure:
    """A short file whole (parsed and chunked), or the first range of a long one (kept open for more)."""
    settings: Settings = _worker_state["settings"]

    def first() -> ParsedFile | PageRange:
        pdf = _worker_state["open"].get(path)
        if pdf.page_count > pages_per_task:
            return pdf.read(0, pages_per_task)
        part = pdf.read()
        document = assemble_document(path, part.content_hash, [part], settings.ingest)
        return chunk_parsed(_worker_state["chunker"], name, path, document)

    return guarded(name, first)


def _worker_range(name: str, path: Path, start: int, stop: int) -> PageRange | FileFailure:
    return guarded(name, lambda: _worker_state["open"].get(path).read(start, stop))


def _worker_chunk(name: str, path: Path, content_hash: str, parts: list[PageRange]) -> ParsedFile | FileFailure:
    settings: Settings = _worker_state["settings"]
    return guarded(
        name, lambda: chunk_parsed(_worker_state["chunker"], name, path,
                               assemble_document(path, content_hash, parts, settings.ingest)),
    )


# -- shared ------------------------------------------------------------------------------------------------
def chunk_parsed(chunker: Chunker, name: str, path: Path, document) -> ParsedFile:
    """Chunk a parsed document into the ParsedFile stored under ``name``; PdfError when no text is left
    (shared by every engine, so that a file is refused for the same reason wherever it is parsed)."""
    chunks = chunker.chunk(document, name)
    if not chunks:
        raise PdfError("no text to index after extraction")
    return ParsedFile(name, document.content_hash, len(document.pages), path.stat().st_size, chunks,
                      document.ocr_pages, document.table_pages)
