"""Ingest PDFs into a DocumentIndex: plan by content hash, parse and chunk in worker processes, embed in
batches, commit in atomic checkpoints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rag.ingestion.chunking import relative_name
from rag.indexing.embedding import SentenceTransformerEmbedder
from rag.errors import UsageError
from rag.indexing.index import DocumentIndex, NewDocument, Profile
from rag.ingestion.parse_pool import ParsedFile, parse_files
from rag.ingestion.pdf_parsing import sha256_file
from rag.settings import Settings
from rag.types import FileFailure, IngestReport


# Below this many bytes to parse, worker processes cost more to start (imports) than they save.
PARALLEL_MIN_BYTES = 4 * 2**20

FOLDER = "folder"  # documents synced from a folder by rag-ingest
UPLOAD = "upload"  # documents posted to the API


@dataclass
class Plan:
    """What a sync must do: files to (re)ingest and stored documents to drop."""

    to_ingest: list[tuple[str, Path]] = field(default_factory=list)  # (stored name, file)
    to_remove: list[str] = field(default_factory=list)
    new: int = 0
    changed: int = 0
    unchanged: int = 0


def find_pdfs(docs_dir: Path) -> list[Path]:
    """PDF files under ``docs_dir`` (recursive, case-insensitive suffix), sorted; UsageError if none."""
    if not docs_dir.exists():
        raise UsageError(f"folder not found: {docs_dir}")
    if not docs_dir.is_dir():
        raise UsageError(f"not a folder: {docs_dir}")
    files = sorted(p for p in docs_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    if not files:
        raise UsageError(f"no PDF files under {docs_dir}")
    return files


def plan_sync(index: DocumentIndex, docs_dir: Path, files: list[Path], rebuild: bool) -> Plan:
    """Compare the folder with the stored documents of the folder collection by content hash."""
    stored = index.store.documents(FOLDER)
    plan = Plan()
    seen = set()
    for path in files:
        name = relative_name(path, docs_dir)
        seen.add(name)
        record = stored.get(name)
        if record is None:
            plan.new += 1
        elif rebuild or record.content_hash != sha256_file(path):
            plan.changed += 1
        else:
            plan.unchanged += 1
            continue
        plan.to_ingest.append((name, path))
    plan.to_remove = sorted(set(stored) - seen)
    return plan


class Ingestor:
    """Parses, chunks and embeds PDFs and commits them to an index.

    ``embedder`` is loaded on first need (a rerun with nothing to do never loads it); ``embedder_id`` names
    it in the index profile; ``tokenizer_path`` is the embedder's folder or id (chunks are sized in its tokens).
    """

    def __init__(self, settings: Settings, embedder: SentenceTransformerEmbedder, embedder_id: str, tokenizer_path: str):
        self.settings = settings
        self._embedder = embedder
        self.embedder_id = embedder_id
        self.tokenizer_path = tokenizer_path

    @property
    def embedder(self) -> SentenceTransformerEmbedder:
        if not self._embedder.loaded:
            self._embedder.load()
        return self._embedder

    @property
    def profile(self) -> Profile:
        return Profile(
            embedder=self.embedder_id, dim=self.embedder.dim, chunk_tokens=self.settings.chunking.chunk_tokens,
            overlap_tokens=self.settings.chunking.overlap_tokens,
        )

    # -- entry points ---------------------------------------------------------------------------------
    def sync_folder(
        self, index: DocumentIndex, docs_dir: Path, rebuild: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> IngestReport:
        """Make the index's folder collection match ``docs_dir``; call under ``index.writing()``."""
        started = time.perf_counter()
        files = find_pdfs(docs_dir)
        report = IngestReport()
        if rebuild:
            # Everything is re-embedded and old chunks dropped in the same commit as the new ones land,
            # so the previous index stays usable until the rebuild is complete.
            stale = sorted(index.store.documents())
            plan = plan_sync(index, docs_dir, files, rebuild=True)
            plan.to_remove = stale
        else:
            plan = plan_sync(index, docs_dir, files, rebuild=False)
            if plan.to_ingest or plan.to_remove:
                index.check_profile(self.profile)  # before parsing anything: fail fast on a mismatch
        report.new, report.changed, report.unchanged = plan.new, plan.changed, plan.unchanged
        report.removed = len(set(plan.to_remove) - {n for n, _ in plan.to_ingest})
        if progress:
            progress(plan.unchanged)
        if plan.to_ingest or plan.to_remove:
            self._run(
                index, plan.to_ingest, plan.to_remove, FOLDER, report, progress, checkpoints=not rebuild,
                engine=self.settings.ingest.engine,
            )
        report.chunks_total = index.store.count_chunks()
        report.seconds = time.perf_counter() - started
        return report

    def add_file(self, index: DocumentIndex, path: Path, name: str) -> IngestReport:
        """Ingest one file (an upload) under ``name``, replacing a stored document of that name."""
        started = time.perf_counter()
        report = IngestReport()
        existing = index.store.documents().get(name)
        if existing is not None and existing.content_hash == sha256_file(path):
            report.unchanged = 1
        else:
            report.new, report.changed = (0, 1) if existing else (1, 0)
            # No removal up front: a stored version is replaced only when the new file parses. One upload is
            # never worth a cluster: always the local engine.
            self._run(index, [(name, path)], [], UPLOAD, report, None, checkpoints=False)
        report.chunks_total = index.store.count_chunks()
        report.seconds = time.perf_counter() - started
        return report

    # -- the pipeline ---------------------------------------------------------------------------------
    def _run(
        self, index: DocumentIndex, files: list[tuple[str, Path]], remove: list[str], collection: str,
        report: IngestReport, progress: Callable[[int], None] | None, checkpoints: bool, engine: str = "local",
    ) -> None:
        """Parse, chunk and embed ``files`` on ``engine``, and commit them (and ``remove``) to ``index``.

        Both engines hand this loop groups of results; committing stays here, in this process, so the
        index's crash safety and format do not depend on where the work ran.
        """
        stages = report.stage_seconds
        if engine == "ray":
            from rag.ingestion.ray_engine import RayEngine

            groups = RayEngine(self.settings).run(files, collection, stages)
        else:
            groups = self._local_groups(files, collection, stages)
        self._commit_all(index, groups, remove, collection, report, progress, checkpoints)

    def _commit_all(
        self, index: DocumentIndex, groups: Iterator[list[NewDocument | FileFailure]], remove: list[str],
        collection: str, report: IngestReport, progress: Callable[[int], None] | None, checkpoints: bool,
    ) -> None:
        pending_remove = list(remove)
        ready: list[NewDocument] = []
        last_commit = time.perf_counter()
        stages = report.stage_seconds

        def commit() -> None:
            nonlocal pending_remove, ready, last_commit
            started = time.perf_counter()
            replaced = [d.path for d in ready if d.path not in pending_remove]
            removed, added = index.apply(self.profile, pending_remove + replaced, ready)
            report.chunks_removed += removed
            report.chunks_added += added
            pending_remove, ready, last_commit = [], [], time.perf_counter()
            stages["index"] = stages.get("index", 0.0) + time.perf_counter() - started

        for group in groups:
            for result in group:
                if isinstance(result, FileFailure):
                    report.failed.append(result)
                    if collection == FOLDER and result.path in index.store.documents():
                        # The folder's file changed into something unreadable: the index mirrors the folder, so
                        # its old chunks go. (An upload that fails keeps the stored version instead.)
                        pending_remove.append(result.path)
                else:
                    report.pages += result.pages
                    ready.append(result)
                if progress:
                    progress(1)
            if ready and checkpoints and time.perf_counter() - last_commit >= self.settings.ingest.checkpoint_seconds:
                commit()
        if ready or pending_remove:
            commit()

    def _local_groups(
        self, files: list[tuple[str, Path]], collection: str, stages: dict[str, float],
    ) -> Iterator[list[NewDocument | FileFailure]]:
        """The local engine: parse and chunk in worker processes, embed here in batches of several files."""
        batch: list[ParsedFile] = []
        for result in self._parse_all(files, stages):
            if isinstance(result, FileFailure):
                yield [result]
                continue
            batch.append(result)
            if sum(len(f.chunks) for f in batch) >= self.settings.ingest.embed_batch_size * 4:
                yield self._embed(batch, collection, stages)
                batch = []
        yield self._embed(batch, collection, stages)

    def _parse_all(self, files: list[tuple[str, Path]], stages: dict[str, float]) -> Iterator[ParsedFile | FileFailure]:
        """Parse and chunk files, in worker processes when there are enough bytes; yields in completion order."""
        started = time.perf_counter()
        workers = min(self.settings.ingest.workers or os.cpu_count() or 1, len(files))
        if sum(path.stat().st_size for _, path in files) < PARALLEL_MIN_BYTES:
            workers = 1
        yield from parse_files(files, self.tokenizer_path, self.settings, workers)
        stages["parse_chunk"] = stages.get("parse_chunk", 0.0) + time.perf_counter() - started

    def _embed(self, batch: list[ParsedFile], collection: str, stages: dict[str, float]) -> list[NewDocument]:
        """Embed the chunks of several files in one call (fewer, fuller batches)."""
        if not batch:
            return []
        started = time.perf_counter()
        texts = [c.text for f in batch for c in f.chunks]
        vectors = self.embedder.embed_documents(texts)  # (len(texts), dim)
        stages["embed"] = stages.get("embed", 0.0) + time.perf_counter() - started
        docs, offset = [], 0
        for f in batch:
            n = len(f.chunks)
            docs.append(NewDocument(
                path=f.name, collection=collection, content_hash=f.content_hash, pages=f.pages,
                size_bytes=f.size_bytes, chunks=f.chunks, vectors=vectors[offset:offset + n],
            ))
            offset += n
        return docs
