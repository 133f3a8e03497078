"""Ingest PDFs into a DocumentIndex: plan by content hash, parse and chunk in worker processes, embed in
batches, commit in atomic checkpoints.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
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
UPLOAD_PREFIX = "uploads/"  # stored names of uploads, apart from the folder rag-ingest syncs
KNOWN_FAILURE_NOTE = " (unchanged since it failed; not parsed again: rag-ingest --rebuild retries it)"


def upload_dir(settings: Settings, index_path: Path) -> Path:
    """Where uploaded PDFs are kept: ``api.upload_dir``, else ``<index>/uploads``."""
    return settings.api.upload_dir or index_path / "uploads"


@dataclass
class Plan:
    """What a sync must do: files to (re)ingest and stored documents to drop."""

    to_ingest: list[tuple[str, Path]] = field(default_factory=list)  # (stored name, file)
    to_remove: list[str] = field(default_factory=list)
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    hashes: dict[str, str] = field(default_factory=dict)  # stored name -> sha256 when planned
    is_new: set[str] = field(default_factory=set)  # names planned as new (the others in to_ingest changed)
    known: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (hash, reason): failed before, unchanged

    @property
    def known_failures(self) -> list[FileFailure]:
        """The files that failed on an earlier run and are unchanged: reported again, not parsed again."""
        return [FileFailure(name, reason + KNOWN_FAILURE_NOTE) for name, (_, reason) in sorted(self.known.items())]


@dataclass
class FolderScan:
    """What a folder holds: readable PDF files (sorted), and the entries named like PDFs that cannot be read."""

    files: list[Path] = field(default_factory=list)
    failures: list[FileFailure] = field(default_factory=list)


def display_name(name: str) -> str:
    """``name`` printable and JSON-safe: bytes that are not UTF-8 (kept by Python as lone surrogates) become
    ``\\xNN`` escapes, so reports never fail to encode."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def scan_folder(docs_dir: Path) -> FolderScan:
    """Entries named ``*.pdf`` (any case) under ``docs_dir``, recursively, without following symlinked folders.

    Regular files (or symlinks to them) are returned to ingest; every other entry named like a PDF is a
    failure with its reason (a broken or looping symlink, a FIFO or other special file, a folder named
    ``x.pdf``, a name that is not valid UTF-8), as is a subfolder that cannot be listed. Nothing is opened here,
    so a FIFO can never block the scan. UsageError for a missing folder, or one with no entry named like a PDF.
    """
    if not docs_dir.exists():
        raise UsageError(f"folder not found: {display_name(str(docs_dir))}")
    if not docs_dir.is_dir():
        raise UsageError(f"not a folder: {display_name(str(docs_dir))}")
    scan = FolderScan()

    def unreadable(error: OSError) -> None:
        name = relative_name(Path(error.filename), docs_dir) if error.filename else "."
        scan.failures.append(FileFailure(display_name(name), f"cannot list folder: {error.strerror or error}"))

    for root, dirs, names in os.walk(docs_dir, onerror=unreadable):
        for entry in sorted(dirs + names):
            path = Path(root) / entry
            if path.suffix.lower() != ".pdf":
                continue
            reason = _unreadable_reason(path, relative_name(path, docs_dir))
            if reason is None:
                scan.files.append(path)
            else:
                scan.failures.append(FileFailure(display_name(relative_name(path, docs_dir)), reason))
    scan.files.sort()
    if not scan.files and not scan.failures:
        raise UsageError(f"no PDF files under {display_name(str(docs_dir))}")
    return scan


def _unreadable_reason(path: Path, name: str) -> str | None:
    """Why the entry at ``path`` cannot be ingested as a PDF, or None when it is a regular file we can name."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8: rename the file"
    try:
        info = path.stat()  # follows symlinks
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        if path.is_symlink():
            return f"broken symbolic link (target {display_name(os.readlink(path))} not found)"
        return f"cannot read file: {error.strerror or error}"
    if stat.S_ISDIR(info.st_mode):
        return "a folder named like a PDF (its contents are searched, the folder itself is not a file)"
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "a device"
        return f"not a regular file ({kind})"
    return None


def find_pdfs(docs_dir: Path) -> list[Path]:
    """The readable PDF files of ``scan_folder(docs_dir)``."""
    return scan_folder(docs_dir).files


def plan_sync(index: DocumentIndex, docs_dir: Path, files: list[Path], rebuild: bool) -> Plan:
    """Compare the folder with the stored documents of the folder collection by content hash.

    A file that failed on an earlier run and has the same hash now is not parsed again: it is listed in
    ``known_failures`` with its recorded reason (``rebuild`` retries everything).
    """
    stored = index.store.documents(FOLDER)
    failed_before = {} if rebuild else index.store.failures()
    plan = Plan()
    seen = set()
    for path in files:
        name = relative_name(path, docs_dir)
        seen.add(name)
        record = stored.get(name)
        try:
            digest = sha256_file(path)
        except OSError:  # unreadable or gone since the scan: the parse reports why
            digest = ""
        if record is not None and not rebuild and record.content_hash == digest:
            plan.unchanged += 1
            continue
        if record is None and name in failed_before and failed_before[name][0] == digest:
            plan.known[name] = failed_before[name]
            continue
        if record is None:
            plan.new += 1
            plan.is_new.add(name)
        else:
            plan.changed += 1
        plan.hashes[name] = digest
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
        """Make the index's folder collection match ``docs_dir``; call under ``index.writing()``.

        Every entry that could not be ingested is in ``report.failed`` with its reason, and is counted neither
        as new nor as changed. ``rebuild`` re-embeds the folder's files and the uploads (from the upload folder).
        """
        started = time.perf_counter()
        scan = scan_folder(docs_dir)
        report = IngestReport()
        report.failed += scan.failures
        collections: dict[str, str] = {}
        if rebuild:
            plan = plan_sync(index, docs_dir, scan.files, rebuild=True)
            # Everything is re-embedded and old chunks dropped in the same commit as the new ones land,
            # so the previous index stays usable until the rebuild is complete.
            keep = self._plan_uploads(index, plan, collections, report)
            plan.to_remove = sorted(set(index.store.documents()) - keep)
        else:
            plan = plan_sync(index, docs_dir, scan.files, rebuild=False)
            if plan.to_ingest or plan.to_remove:
                index.check_profile(self.profile)  # before parsing anything: fail fast on a mismatch
        report.failed += plan.known_failures
        report.new, report.changed, report.unchanged = plan.new, plan.changed, plan.unchanged
        report.removed = len(set(plan.to_remove) - {n for n, _ in plan.to_ingest})
        if progress:
            progress(plan.unchanged)
        parsed_failures = len(report.failed)
        if plan.to_ingest or plan.to_remove:
            self._run(
                index, plan.to_ingest, plan.to_remove, FOLDER, report, progress, checkpoints=not rebuild,
                collections=collections, engine=self.settings.ingest.engine,
            )
        for failure in report.failed[parsed_failures:]:  # files that were parsed and failed: neither new nor changed
            if failure.path in plan.is_new:
                report.new -= 1
            elif failure.path in plan.hashes:
                report.changed -= 1
        # Remember what failed (by content hash), so an unchanged bad file is reported, not parsed, next time.
        index.store.replace_failures([
            (f.path, plan.hashes[f.path], f.reason) for f in report.failed[parsed_failures:]
            if collections.get(f.path, FOLDER) == FOLDER and f.path in plan.hashes
        ] + [(name, digest, reason) for name, (digest, reason) in plan.known.items()])
        report.chunks_total = index.store.count_chunks()
        report.seconds = time.perf_counter() - started
        return report

    def _plan_uploads(
        self, index: DocumentIndex, plan: Plan, collections: dict[str, str], report: IngestReport,
    ) -> set[str]:
        """Queue the stored uploads for a rebuild from their kept files; returns the uploads to keep as they are.

        An upload whose file is gone is reported; its chunks stay while the profile is unchanged (they are still
        valid), else they must go with the rest of the old index.
        """
        keep: set[str] = set()
        folder = upload_dir(self.settings, index.path)
        same_profile = index.profile == self.profile
        for name in index.store.documents(UPLOAD):
            path = folder / name.removeprefix(UPLOAD_PREFIX)
            if path.is_file():
                plan.to_ingest.append((name, path))
                plan.changed += 1
                plan.hashes[name] = sha256_file(path)
                collections[name] = UPLOAD
                continue
            kept = "kept as indexed" if same_profile else "removed: its chunks were made with the old settings"
            report.failed.append(FileFailure(name, f"uploaded file {path} is missing ({kept}); upload it again"))
            if same_profile:
                keep.add(name)
        return keep

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
        report: IngestReport, progress: Callable[[int], None] | None, checkpoints: bool,
        collections: dict[str, str] | None = None, engine: str = "local",
    ) -> None:
        """Parse, chunk and embed ``files`` on ``engine``, and commit them (and ``remove``) to ``index``; each is
        stored in ``collection`` unless ``collections`` names another (uploads re-embedded by a rebuild).

        Both engines hand this loop groups of results; committing stays here, in this process, so the
        index's crash safety and format do not depend on where the work ran.
        """
        stages = report.stage_seconds
        if engine == "ray":
            from rag.ingestion.ray_engine import RayEngine

            groups = RayEngine(self.settings).run(files, collection, stages)
        else:
            groups = self._local_groups(files, collection, stages)
        self._commit_all(index, groups, remove, collection, collections or {}, report, progress, checkpoints)

    def _commit_all(
        self, index: DocumentIndex, groups: Iterator[list[NewDocument | FileFailure]], remove: list[str],
        collection: str, collections: dict[str, str], report: IngestReport,
        progress: Callable[[int], None] | None, checkpoints: bool,
    ) -> None:
        """Commit the engine's results as they come: every ``ingest.checkpoint_seconds`` when ``checkpoints``,
        and at the end."""
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
                    if collections.get(result.path, collection) == FOLDER and result.path in index.store.documents():
                        # The folder's file changed into something unreadable: the index mirrors the folder, so
                        # its old chunks go. (An upload that fails keeps the stored version instead.)
                        pending_remove.append(result.path)
                else:
                    if result.path in collections and result.collection != collections[result.path]:
                        result = replace(result, collection=collections[result.path])
                    report.pages += result.pages
                    report.ocr_pages += result.ocr_pages
                    report.table_pages += result.table_pages
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
                size_bytes=f.size_bytes, chunks=f.chunks, vectors=vectors[offset:offset + n], ocr_pages=f.ocr_pages,
                table_pages=f.table_pages,
            ))
            offset += n
        return docs
