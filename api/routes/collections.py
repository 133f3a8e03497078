"""GET /v1/collections: the named collections under the served index root, with their sizes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from api.deps import CollectionsDep, open_collection
from api.schemas import CollectionOut

router = APIRouter(tags=["collections"])


@router.get("/v1/collections", response_model=list[CollectionOut])
async def list_collections(collections: CollectionsDep) -> list[CollectionOut]:
    """Every collection, ``default`` first; another is created by uploading to it (``POST
    /v1/documents?collection=NAME``) or by ``rag-ingest DOCS_DIR --collection NAME``."""

    def sizes() -> list[CollectionOut]:
        out = []
        for name in collections.names():
            count, chunks = open_collection(collections, name).documents.counts()
            out.append(CollectionOut(name=name, documents=count, chunks=chunks))
        return out

    return await asyncio.to_thread(sizes)  # the first listing opens each collection (its BM25 index)
