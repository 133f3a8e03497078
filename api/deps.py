"""Request dependencies as ``Annotated`` aliases; tests swap them through ``app.dependency_overrides``.

Everything comes from ``app.state``, filled by the app's lifespan: ``settings`` and ``runtime`` (a started
``rag.runtime.Runtime``, the composition root). Routes depend on the two services it builds, never on its
other parts: ``AnswersDep`` (``rag.answering.service.AnswerService``) and ``DocumentsDep``
(``rag.ingestion.documents.DocumentService``), both of the collection the request names (``?collection=`` on
the document routes, the body's ``collection`` or ``model`` on the answering routes; ``default`` when none), which
``app.state.collections`` (``rag.collections.Collections``) opens on first use.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import API_KEY_COOKIE, CHALLENGE, UNAUTHORIZED_DETAIL, key_matches, presented_key
from api.observe import ObservedAnswers
from api.schemas import ChatCompletionRequest, QueryRequest, check_limits
from rag.answering.service import AnswerService
from rag.collections import DEFAULT_COLLECTION, NAME_PATTERN, BadCollectionName, CollectionNotFound, Collections
from rag.indexing.index import IndexIncompatible
from rag.ingestion.documents import DocumentService
from rag.runtime import Runtime
from rag.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="Needed when the service runs with api.api_key set.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_runtime(request: Request) -> Runtime:
    """The started runtime; 503 while there is none (outside the app's lifespan)."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or runtime.documents is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting or stopping; retry shortly")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_collections(request: Request, runtime: RuntimeDep) -> Collections:
    """The collections under the served index root (503 outside the app's lifespan, like ``get_runtime``)."""
    collections = getattr(request.app.state, "collections", None)
    if collections is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting or stopping; retry shortly")
    return collections


CollectionsDep = Annotated[Collections, Depends(get_collections)]


def collection_query(
    request: Request,
    collection: Annotated[str, Query(pattern=NAME_PATTERN, description="The collection (default: 'default').")]
    = DEFAULT_COLLECTION,
) -> str:
    """The ``?collection=`` of a request (422 for a bad name), remembered for ``get_answers``."""
    request.state.collection = collection
    return collection


CollectionQuery = Annotated[str, Depends(collection_query)]


def open_collection(collections: Collections, name: str, create: bool = False) -> Runtime:
    """The runtime of collection ``name``: 404 when there is none (or the name cannot be one), 409 when it was
    built with another embedder than the service's."""
    try:
        return collections.get(name, create=create)
    except (CollectionNotFound, BadCollectionName) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except IndexIncompatible as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


def get_answers(request: Request, collections: CollectionsDep) -> AnswerService:
    """The answering pipeline of the request's collection; 404 for an unknown collection, 503 when the runtime
    was started without a generator or the collection is empty. Observed (metrics, one log line per question).

    The collection is the one the body validator (``valid_query``, ``valid_chat``) or ``collection_query``
    recorded in ``request.state``: routes declare those parameters before this one, and FastAPI resolves a
    route's dependencies in the order they are declared."""
    collection = getattr(request.state, "collection", DEFAULT_COLLECTION)
    runtime = open_collection(collections, collection)
    if runtime.answers is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the generator is not loaded in this process")
    if runtime.index.is_empty():  # not a 200 "not in the documents": there are no documents
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the index at {runtime.index.path} has no chunks: run `rag-ingest DOCS_DIR` or POST /v1/documents",
        )
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is None:  # an app without metrics (bench.naive_server)
        return runtime.answers
    return ObservedAnswers(  # type: ignore[return-value]
        runtime.answers, metrics, getattr(request.state, "request_id", None), collection=collection,
    )


AnswersDep = Annotated[AnswerService, Depends(get_answers)]


def get_documents(collections: CollectionsDep, collection: CollectionQuery) -> DocumentService:
    """What the ``?collection=`` holds (404 when there is no such collection)."""
    return open_collection(collections, collection).documents


DocumentsDep = Annotated[DocumentService, Depends(get_documents)]


def require_api_key(
    request: Request, settings: SettingsDep,
    # Unused here: declares the bearer scheme in the OpenAPI document (presented_key reads the header itself).
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request presents ``api.api_key`` (no check when no key is configured): the rule of
    ``api.auth.presented_key``. The app checks it first in the ``api.auth.RequireApiKey`` middleware, before the
    body is read; this dependency declares the bearer scheme in the OpenAPI document and checks again."""
    expected = settings.api.api_key
    if not expected:
        return
    given = presented_key(
        request.method, request.headers.get("authorization"), request.cookies.get(API_KEY_COOKIE)
    )
    if not key_matches(expected, given):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, UNAUTHORIZED_DETAIL, headers=CHALLENGE)


def valid_query(body: QueryRequest, settings: SettingsDep, request: Request) -> QueryRequest:
    """The request body, also checked against the limits in settings; its collection is kept for ``get_answers``."""
    check_limits(settings, body.question, body.max_new_tokens)
    request.state.collection = body.collection
    return body


ValidQuery = Annotated[QueryRequest, Depends(valid_query)]


def valid_chat(body: ChatCompletionRequest, settings: SettingsDep, request: Request) -> ChatCompletionRequest:
    """The request body, also checked against the limits in settings; the collection its ``model`` names is
    kept for ``get_answers``."""
    # Both caps are checked, not only the one that applies (max_completion_tokens wins): the schema bounds both.
    check_limits(
        settings, body.question, body.max_completion_tokens, ("body", "messages"), ("body", "max_completion_tokens"),
        more_tokens={("body", "max_tokens"): body.max_tokens},
    )
    request.state.collection = body.collection
    return body


ValidChat = Annotated[ChatCompletionRequest, Depends(valid_chat)]
