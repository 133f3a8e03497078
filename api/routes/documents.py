"""GET /v1/documents (what is indexed) and POST /v1/documents (upload and ingest one PDF)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, UploadFile, status

from api.deps import DocumentsDep
from api.metrics import MetricsDep
from api.schemas import DocumentOut, ErrorOut, UploadOut
from rag.ingestion.documents import NotAPdf, TooLarge, UploadRejected

router = APIRouter(tags=["documents"])


@router.get("/v1/documents", response_model=list[DocumentOut])
def list_documents(documents: DocumentsDep) -> list[DocumentOut]:
    """Every stored document, by name."""
    return [DocumentOut.from_record(r) for r in documents.list()]


@router.post(
    "/v1/documents", status_code=status.HTTP_201_CREATED, response_model=UploadOut,
    responses={
        409: {"model": ErrorOut, "description": "Another process is writing to the index."},
        413: {"model": ErrorOut, "description": "The file is larger than api.max_upload_mb."},
        415: {"model": ErrorOut, "description": "The file name does not end in .pdf."},
        422: {"model": ErrorOut, "description": "A bad file name, or a PDF that cannot be ingested (the reason)."},
    },
)
async def upload_document(file: UploadFile, documents: DocumentsDep, metrics: MetricsDep) -> UploadOut:
    """Ingest one PDF (multipart field ``file``) as ``uploads/<file name>``, replacing an upload of that name."""
    try:
        with metrics.ingest_failures.count_exceptions():
            upload = await asyncio.to_thread(documents.upload, file.file, file.filename, file.size)
    except NotAPdf as exc:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(exc)) from exc
    except TooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
    except UploadRejected as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    metrics.observe_upload(upload.status, upload.chunks)
    return UploadOut(document=upload.document, pages=upload.pages, chunks=upload.chunks, status=upload.status)
