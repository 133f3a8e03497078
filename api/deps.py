"""Request dependencies as ``Annotated`` aliases; tests swap them through ``app.dependency_overrides``.

Everything comes from ``app.state``, filled by the app's lifespan: ``settings`` and ``runtime`` (a started
``rag.runtime.Runtime``, the composition root). Routes depend on the two services it builds, never on its
other parts: ``AnswersDep`` (``rag.answering.service.AnswerService``) and ``DocumentsDep``
(``rag.ingestion.documents.DocumentService``).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.observe import ObservedAnswers
from api.schemas import ChatCompletionRequest, QueryRequest, check_limits
from rag.answering.service import AnswerService
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


def get_answers(runtime: RuntimeDep, request: Request) -> AnswerService:
    """The answering pipeline, observed (metrics, one log line per question); 503 when the runtime was started
    without a generator."""
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
    return ObservedAnswers(runtime.answers, metrics, getattr(request.state, "request_id", None))  # type: ignore[return-value]


AnswersDep = Annotated[AnswerService, Depends(get_answers)]


def get_documents(runtime: RuntimeDep) -> DocumentService:
    """What the index holds, and uploads into it."""
    return runtime.documents


DocumentsDep = Annotated[DocumentService, Depends(get_documents)]


def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless ``Authorization: Bearer <api.api_key>`` is sent (no check when no key is configured)."""
    expected = settings.api.api_key
    if not expected:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )



def valid_query(body: QueryRequest, settings: SettingsDep) -> QueryRequest:
    """The request body, also checked against the limits in settings."""
    check_limits(settings, body.question, body.max_new_tokens)
    return body


ValidQuery = Annotated[QueryRequest, Depends(valid_query)]


def valid_chat(body: ChatCompletionRequest, settings: SettingsDep) -> ChatCompletionRequest:
    """The request body, also checked against the limits in settings."""
    tokens_field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    check_limits(settings, body.question, body.max_new_tokens, ("body", "messages"), ("body", tokens_field))
    return body


ValidChat = Annotated[ChatCompletionRequest, Depends(valid_chat)]
