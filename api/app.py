"""The app factory: ``create_app(settings)`` builds the FastAPI app; models load in its lifespan."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import require_api_key
from api.routes import documents, health, openai_compat, query
from rag.answering.batching import GenerationTimeout, Overloaded
from rag.indexing.index import IndexBusy
from rag.ingestion.documents import MB
from rag.runtime import Runtime
from rag.settings import Settings

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1024 * 1024  # bytes; questions are capped far below this by api.max_question_chars
MULTIPART_OVERHEAD = 64 * 1024  # bytes of multipart framing allowed on top of api.max_upload_mb
OPENAI_PREFIX = "/v1/chat/"  # routes whose errors also carry OpenAI's error object


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """The service over ``settings``.

    Without ``runtime`` the lifespan builds and starts one (``rag.runtime.Runtime``, loading the models) and
    closes it at shutdown; a ``runtime`` given here (tests) must be started already and is left open for its
    owner to close. Nothing loads when this function runs. Routes get the runtime's services through
    ``api.deps``; tests swap one with ``app.dependency_overrides[api.deps.get_answers] = ...``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        if owned:
            started = Runtime(settings)
            try:
                await asyncio.to_thread(started.start)
            except BaseException:
                started.close()
                raise
            app.state.runtime = started
        try:
            yield
        finally:
            if owned:
                await asyncio.to_thread(app.state.runtime.close)
            app.state.runtime = None

    app = FastAPI(
        title="grounded-rag",
        summary="Answers questions from PDFs with page citations, or abstains.",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=JSON_BODY_LIMIT,
    )
    app.state.settings = settings
    app.state.runtime = runtime

    guarded = [Depends(require_api_key)]
    app.include_router(health.public)
    app.include_router(health.router, dependencies=guarded)
    app.include_router(query.router, dependencies=guarded)
    app.include_router(openai_compat.router, dependencies=guarded)
    app.include_router(
        documents.router, dependencies=guarded,
        max_body_size=int(settings.api.max_upload_mb * MB) + MULTIPART_OVERHEAD,
    )

    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(GenerationTimeout, _timed_out)
    app.add_exception_handler(IndexBusy, _index_busy)
    app.add_exception_handler(Exception, _unexpected)
    return app


def _error(request: Request, code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"detail": ...}`` as FastAPI writes it; on the OpenAI-compatible routes also OpenAI's ``error`` object,
    whose ``message`` the official clients put in the exception they raise."""
    body: dict[str, Any] = {"detail": detail}
    if request.url.path.startswith(OPENAI_PREFIX):
        kind = "server_error" if code >= 500 else "authentication_error" if code == 401 else "invalid_request_error"
        body["error"] = {"message": _message(detail), "type": kind, "code": code}
    return JSONResponse(body, code, headers=headers)


def _message(detail: Any) -> str:
    if isinstance(detail, list):  # validation errors: "field: what is wrong; ..."
        return "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in detail
        )
    return str(detail)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(request, status.HTTP_422_UNPROCESSABLE_CONTENT, jsonable_encoder(exc.errors()))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(request, exc.status_code, exc.detail, exc.headers)


async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    retry_after = max(1, math.ceil(exc.retry_after_s))  # whole seconds, as the header requires
    return _error(request, status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), {"Retry-After": str(retry_after)})


async def _timed_out(request: Request, exc: GenerationTimeout) -> JSONResponse:
    return _error(request, status.HTTP_504_GATEWAY_TIMEOUT, f"generation timed out: {exc}")


async def _index_busy(request: Request, exc: IndexBusy) -> JSONResponse:
    return _error(request, status.HTTP_409_CONFLICT, str(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(request, status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")
