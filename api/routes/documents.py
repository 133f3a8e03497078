"""The documents of a collection (``?collection=``, default ``default``): GET /v1/documents (what is indexed),
POST /v1/documents (upload and ingest one PDF; creates the collection), DELETE /v1/documents/{document} and
GET /v1/documents/{document}/file (the stored PDF)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, UploadFile, status
from fastapi.responses import FileResponse

from api.deps import CollectionQuery, CollectionsDep, DocumentsDep, open_collection
from api.metrics import MetricsDep
from api.schemas import BAD_BODY, DeletedOut, DocumentOut, ErrorOut, UploadOut
from rag.ingestion.documents import DocumentNotFound, NotAPdf, TooLarge, UploadRejected, safe_pdf_name

router = APIRouter(tags=["documents"])

BUSY = {409: {"model": ErrorOut, "description": "Another process is writing to the collection's index."}}


@router.get("/v1/documents", response_model=list[DocumentOut])
def list_documents(documents: DocumentsDep, collection: CollectionQuery) -> list[DocumentOut]:
    """Every stored document of the collection, by name."""
    return [DocumentOut.from_record(r, collection) for r in documents.list()]


@router.post(
    "/v1/documents", status_code=status.HTTP_201_CREATED, response_model=UploadOut,
    responses={
        **BUSY, **BAD_BODY,
        413: {"model": ErrorOut, "description": "The file is larger than api.max_upload_mb."},
        415: {"model": ErrorOut, "description": "The file name does not end in .pdf."},
        422: {"model": ErrorOut, "description": "A bad file name, or a PDF that cannot be ingested (the reason)."},
    },
)
async def upload_document(
    file: UploadFile, collections: CollectionsDep, collection: CollectionQuery, metrics: MetricsDep,
) -> UploadOut:
    """Ingest one PDF (multipart field ``file``) as ``uploads/<file name>``, replacing an upload of that name;
    a collection that does not exist yet is created (and removed again when the upload is refused)."""
    try:
        with metrics.ingest_failures.count_exceptions():
            safe_pdf_name(file.filename)  # before a new collection is created: a refused name leaves none behind
            new = collection not in collections.names()
            documents = open_collection(collections, collection, create=True).documents
            try:
                upload = await asyncio.to_thread(documents.upload, file.file, file.filename, file.size)
            except UploadRejected:
                if new:  # no empty collection (whose questions would be 503 "no chunks") from a refused upload
                    await asyncio.to_thread(collections.discard_if_empty, collection)
                raise
    except NotAPdf as exc:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(exc)) from exc
    except TooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
    except UploadRejected as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    metrics.observe_upload(upload.status, upload.chunks)
    return UploadOut(document=upload.document, pages=upload.pages, chunks=upload.chunks, status=upload.status)


@router.delete("/v1/documents/{document:path}", response_model=DeletedOut, responses=BUSY)
async def delete_document(document: str, documents: DocumentsDep) -> DeletedOut:
    """Remove a document (its stored name, e.g. ``uploads/x.pdf``) and its chunks; an upload's kept file goes
    too. A folder document comes back on the next ``rag-ingest`` of its folder unless removed from it."""
    try:
        removed = await asyncio.to_thread(documents.remove, document)
    except DocumentNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return DeletedOut(document=document, removed_chunks=removed)


@router.get(
    "/v1/documents/{document:path}/file", response_class=FileResponse,
    responses={200: {"content": {"application/pdf": {}}, "description": "The PDF, shown inline."}},
)
def document_file(document: str, documents: DocumentsDep) -> FileResponse:
    """The stored PDF of a document, for a browser to show (``#page=N`` opens a cited page)."""
    try:
        path = documents.file_path(document)
    except DocumentNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return FileResponse(path, media_type="application/pdf", filename=path.name, content_disposition_type="inline")
