"""GET /healthz (the process is up; no auth) and GET /readyz (it can answer questions)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from api.deps import AnswersDep, DocumentsDep
from api.schemas import ErrorOut, Health, Readiness

public = APIRouter(tags=["health"])  # mounted without the API key check
router = APIRouter(tags=["health"])


@public.get("/healthz", response_model=Health)
def healthz() -> Health:
    """200 whenever the process serves requests."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorOut}})
def readyz(documents: DocumentsDep, answers: AnswersDep) -> Readiness:
    """200 when the models are loaded and the index has chunks to answer from; else 503 saying why (the
    dependencies answer 503 while the runtime or its generator is not there)."""
    count, chunks = documents.counts()
    if chunks == 0:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the index at {documents.index_path} has no chunks: run `rag-ingest DOCS_DIR` or POST /v1/documents",
        )
    return Readiness(documents=count, chunks=chunks)
