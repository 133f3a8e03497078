"""GET /v1/documents (what is indexed) and POST /v1/documents (upload and ingest one PDF)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from fastapi import APIRouter, HTTPException, UploadFile, status

from api.deps import RuntimeDep, SettingsDep, UploadLockDep
from api.schemas import DocumentOut, ErrorOut, UploadOut
from rag.runtime import Runtime
from rag.settings import Settings
from rag.indexing.store import DocumentRecord
from rag.ingestion.ingestor import UPLOAD_PREFIX, upload_dir
from rag.types import IngestReport

router = APIRouter(tags=["documents"])

MB = 1024 * 1024
_SAFE_NAME = re.compile(r"[A-Za-z0-9._\- ]+")


@router.get("/v1/documents", response_model=list[DocumentOut])
def list_documents(runtime: RuntimeDep) -> list[DocumentOut]:
    """Every stored document, by name."""
    return [DocumentOut.from_record(r) for r in runtime.index.store.documents().values()]


@router.post(
    "/v1/documents", status_code=status.HTTP_201_CREATED, response_model=UploadOut,
    responses={
        409: {"model": ErrorOut, "description": "Another process is writing to the index."},
        413: {"model": ErrorOut, "description": "The file is larger than api.max_upload_mb."},
        415: {"model": ErrorOut, "description": "The file name does not end in .pdf."},
        422: {"model": ErrorOut, "description": "A bad file name, or a PDF that cannot be ingested (the reason)."},
    },
)
async def upload_document(
    file: UploadFile, runtime: RuntimeDep, settings: SettingsDep, lock: UploadLockDep
) -> UploadOut:
    """Ingest one PDF (multipart field ``file``) as ``uploads/<file name>``, replacing an upload of that name."""
    name = safe_pdf_name(file.filename)
    limit = settings.api.max_upload_mb * MB
    if file.size is not None and file.size > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"file is {file.size / MB:.1f} MB, above the limit of {settings.api.max_upload_mb:g} MB",
        )
    stored = UPLOAD_PREFIX + name
    async with lock:  # one upload at a time in this process; index.writing() covers other processes
        report, record = await asyncio.to_thread(_save_and_ingest, runtime, settings, file.file, name, stored)
    if report.failed or record is None:
        reason = report.failed[0].reason if report.failed else "nothing was stored"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: {reason}")
    state = "new" if report.new else "changed" if report.changed else "unchanged"
    return UploadOut(document=stored, pages=record.pages, chunks=record.chunks, status=state)


def safe_pdf_name(filename: str | None) -> str:
    """The upload's base name (directories dropped, so no traversal), or a 415/422 saying what is wrong."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name.strip()
    if not name.lower().endswith(".pdf"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"only PDF files are accepted: {filename!r} does not end in .pdf"
        )
    if not _SAFE_NAME.fullmatch(name) or name.startswith("."):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"file name {name!r} may only contain letters, digits, spaces, '.', '_' and '-', "
            "and must not start with '.'",
        )
    return name


def upload_folder(settings: Settings, runtime: Runtime) -> Path:
    return upload_dir(settings, runtime.index.path)


def _save_and_ingest(
    runtime: Runtime, settings: Settings, source: BinaryIO, name: str, stored: str
) -> tuple[IngestReport, DocumentRecord | None]:
    """Write the upload beside its final place, ingest it, and keep it only when it was ingested.

    The bytes go to a temporary name first, so a bad upload never overwrites a good file of the same name.
    """
    folder = upload_folder(settings, runtime)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.{uuid.uuid4().hex}.part"
    try:
        with open(partial, "wb") as out:
            shutil.copyfileobj(source, out, MB)
        with runtime.index.writing(wait=True):
            report = runtime.ingestor.add_file(runtime.index, partial, stored)
            record = runtime.index.store.documents().get(stored)
        if not report.failed and record is not None:
            os.replace(partial, folder / name)
        return report, record
    finally:
        partial.unlink(missing_ok=True)
