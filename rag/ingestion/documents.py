"""The documents service: what the index holds, a folder synced into it, one uploaded PDF added to it.

    documents = runtime.documents
    documents.sync_folder(Path("samples/docs"))          # what rag-ingest does
    documents.upload(stream, "report.pdf")                # what POST /v1/documents does
    documents.list(), documents.counts()
    documents.remove("uploads/report.pdf")                # what DELETE /v1/documents/{document} does
    documents.file_path("Normans.pdf")                    # the stored PDF, for GET /v1/documents/{document}/file

Every write holds the index's write lock (``DocumentIndex.writing``) for the whole change, so other
processes see the index before or after it, never halfway.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from rag.errors import RagError
from rag.indexing.index import DocumentIndex
from rag.indexing.store import DocumentRecord
from rag.ingestion.ingestor import UPLOAD, UPLOAD_PREFIX, Ingestor
from rag.types import IngestReport

MB = 1024 * 1024
_SAFE_NAME = re.compile(r"[A-Za-z0-9._\- ]+")


class UploadRejected(RagError):
    """An upload that was not ingested; the message is the reason (the subclasses say which kind)."""


class NotAPdf(UploadRejected):
    """The file name does not end in .pdf."""


class UnsafeName(UploadRejected):
    """The file name has characters outside letters, digits, spaces, '.', '_' and '-', or starts with '.'."""


class TooLarge(UploadRejected):
    """The file is larger than the upload limit."""


class DocumentNotFound(RagError):
    """No stored document of that name, or its file is no longer on disk; the message says which."""


# Store meta key: the folder the last sync_folder read, so a folder document's PDF can be found again.
FOLDER_META = "docs_dir"


@dataclass(frozen=True)
class Upload:
    """An ingested upload: its stored name, what it holds, and whether it was new, changed or unchanged."""

    document: str
    pages: int
    chunks: int
    status: str  # "new" | "changed" | "unchanged"


def safe_pdf_name(filename: str | None) -> str:
    """The upload's base name (directories dropped, so no traversal); NotAPdf or UnsafeName saying why not."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name.strip()
    if not name.lower().endswith(".pdf"):
        raise NotAPdf(f"only PDF files are accepted: {filename!r} does not end in .pdf")
    if not _SAFE_NAME.fullmatch(name) or name.startswith("."):
        raise UnsafeName(
            f"file name {name!r} may only contain letters, digits, spaces, '.', '_' and '-', "
            "and must not start with '.'"
        )
    return name


class DocumentService:
    """The documents of one index: listing, folder sync and uploads (kept in ``upload_dir``)."""

    def __init__(self, index: DocumentIndex, ingestor: Ingestor, upload_dir: Path, max_upload_mb: float):
        if max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
        self.index = index
        self.ingestor = ingestor
        self.upload_dir = Path(upload_dir)
        self.max_upload_mb = max_upload_mb
        self._upload_lock = threading.Lock()  # one upload at a time in this process; writing() covers others

    @property
    def index_path(self) -> Path:
        return self.index.path

    def list(self) -> list[DocumentRecord]:
        """Every stored document."""
        return list(self.index.store.documents().values())

    def counts(self) -> tuple[int, int]:
        """(documents, chunks) in the index."""
        return len(self.index.store.documents()), self.index.store.count_chunks()

    def sync_folder(
        self, docs_dir: Path, rebuild: bool = False, progress: Callable[[int], None] | None = None
    ) -> IngestReport:
        """Make the index's folder collection match ``docs_dir`` (``Ingestor.sync_folder``); IndexBusy when
        another process is writing."""
        with self.index.writing():
            report = self.ingestor.sync_folder(self.index, docs_dir, rebuild=rebuild, progress=progress)
            with self.index.store.transaction():
                self.index.store.set_meta(FOLDER_META, str(Path(docs_dir).resolve()))
            return report

    def remove(self, document: str) -> int:
        """Remove one stored document: its chunks from the store and the FAISS file (one atomic commit, like
        every change), then its kept file when it is an upload. Returns the number of chunks removed; raises
        DocumentNotFound for an unknown name. A folder document's PDF is left in its folder (rag-ingest would
        index it again on the next sync of that folder)."""
        with self._upload_lock, self.index.writing(wait=True):
            record = self.index.store.documents().get(document)
            profile = self.index.profile
            if record is None or profile is None:
                raise DocumentNotFound(f"no document {document!r} in the index at {self.index.path}")
            removed, _ = self.index.apply(profile, remove=[document], add=[])
            # After the commit: a kill in between leaves an unreferenced file (ignored by --rebuild, replaced by
            # the next upload of that name), never an indexed upload whose file is gone.
            if record.collection == UPLOAD:
                (self.upload_dir / document.removeprefix(UPLOAD_PREFIX)).unlink(missing_ok=True)
        return removed

    def file_path(self, document: str) -> Path:
        """The PDF a stored document was read from: an upload's kept file, or a folder document's file in the
        folder last synced. DocumentNotFound when the name is unknown or the file is gone."""
        record = self.index.store.documents().get(document)
        if record is None:
            raise DocumentNotFound(f"no document {document!r} in the index at {self.index.path}")
        if record.collection == UPLOAD:
            folder = self.upload_dir.resolve()
            path = (folder / document.removeprefix(UPLOAD_PREFIX)).resolve()
        else:
            recorded = self.index.store.get_meta(FOLDER_META)
            if recorded is None:
                raise DocumentNotFound(
                    f"{document!r} is indexed, but the folder it was ingested from is not recorded (indexed by an "
                    "earlier version): run rag-ingest on that folder again"
                )
            folder = Path(recorded)
            path = (folder / document).resolve()
        # resolve() follows links and '..': the file must still lie inside the folder it was indexed from
        if not path.is_relative_to(folder) or not path.is_file():
            raise DocumentNotFound(f"the file of {document!r} is no longer at {folder / document}")
        return path

    def upload(self, stream: BinaryIO, filename: str | None, size: int | None = None) -> Upload:
        """Ingest the PDF read from ``stream`` as ``uploads/<file name>``, replacing an upload of that name.

        ``size`` (bytes, when the caller knows it) is checked before reading. The bytes go to a temporary
        name beside the final one, so a bad upload never overwrites a good file of the same name; the file is
        kept only when it was ingested. Raises UploadRejected (NotAPdf, UnsafeName, TooLarge, or the reason the
        PDF cannot be ingested) and IndexBusy.
        """
        name = safe_pdf_name(filename)
        limit = int(self.max_upload_mb * MB)
        if size is not None and size > limit:
            raise TooLarge(self._too_large(size))
        stored = UPLOAD_PREFIX + name
        with self._upload_lock:
            self.upload_dir.mkdir(parents=True, exist_ok=True)
            partial = self.upload_dir / f".{name}.{uuid.uuid4().hex}.part"
            try:
                with open(partial, "wb") as out:
                    shutil.copyfileobj(stream, out, MB)
                if partial.stat().st_size > limit:
                    raise TooLarge(self._too_large(partial.stat().st_size))
                with self.index.writing(wait=True):
                    report = self.ingestor.add_file(self.index, partial, stored)
                    record = self.index.store.documents().get(stored)
                if report.failed or record is None:
                    reason = report.failed[0].reason if report.failed else "nothing was stored"
                    raise UploadRejected(f"{name}: {reason}")
                os.replace(partial, self.upload_dir / name)
            finally:
                partial.unlink(missing_ok=True)
        return Upload(document=stored, pages=record.pages, chunks=record.chunks, status=_status(report))

    def _too_large(self, size: int) -> str:
        return f"file is {size / MB:.1f} MB, above the limit of {self.max_upload_mb:g} MB"


def _status(report: IngestReport) -> str:
    return "new" if report.new else "changed" if report.changed else "unchanged"
