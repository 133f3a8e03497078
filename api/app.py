"""The app factory: ``create_app(settings)`` builds the FastAPI app; models load in its lifespan."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.auth import RequireApiKey
from api.deps import require_api_key
from api.errors import error_response
from api.guards import RequestGuard
from api.metrics import Metrics
from api.metrics import router as metrics_router
from api.observe import REQUEST_ID_HEADER, ObserveRequests
from api.routes import collections, documents, health, openai_compat, query
from api.routes.page import REDOC_JS, STATIC_URL, SWAGGER_CSS, SWAGGER_FAVICON, SWAGGER_JS, add_page
from api.schemas import ErrorOut
from rag.generation.batching import GenerationTimeout, Overloaded
from rag.generation.openai_client import GeneratorUnavailable
from rag.collections import Collections
from rag.indexing.index import IndexBusy
from rag.ingestion.documents import MB
from rag.runtime import Runtime
from rag.settings import Settings

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1024 * 1024  # bytes; questions are capped far below this by api.max_question_chars
MULTIPART_OVERHEAD = 64 * 1024  # bytes of multipart framing allowed on top of api.max_upload_mb

# Statuses any guarded route can answer, declared in the OpenAPI document so clients (and schemathesis) expect them.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorOut, "description": "The request body stopped arriving (api.body_timeout_s)."},
    413: {"model": ErrorOut, "description": "The request body is larger than the route accepts."},
    503: {"model": ErrorOut, "description": "Overloaded (with Retry-After), starting, or nothing indexed yet."},
}
GENERATING_RESPONSES: dict[int | str, dict[str, Any]] = {
    **COMMON_RESPONSES,
    502: {"model": ErrorOut, "description": "The external generator server (generation.backend 'openai') failed."},
    504: {"model": ErrorOut, "description": "The answer did not finish within generation.request_timeout_s."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such collection (or document): the detail names what is missing."},
}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong 'Authorization: Bearer <api.api_key>'."},
}


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
        # The served index is the root of the collections; the others open on first use, sharing its models.
        app.state.collections = Collections(app.state.runtime)
        try:
            yield
        finally:
            await asyncio.to_thread(app.state.collections.close)
            app.state.collections = None
            if owned:
                await asyncio.to_thread(app.state.runtime.close)
            app.state.runtime = None

    app = FastAPI(
        title="grounded-rag",
        summary="Answers questions from PDFs with page citations, or abstains.",
        version="0.1.0",
        lifespan=lifespan,
        # Served below, behind the API key like every route but /healthz.
        openapi_url=None, docs_url=None, redoc_url=None,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.collections = None  # built in the lifespan, over the runtime
    app.state.metrics = metrics = Metrics(queue_depth=lambda: _queue_depth(app))

    guarded = [Depends(require_api_key)]
    auth = UNAUTHORIZED if settings.api.api_key else {}
    # The body limits are set per router, not on the app: FastAPI's app-wide limit runs outside every middleware
    # and turns any response to a request that announces a larger body into its 413, the 401 of a request
    # without the key included. Per router, the key is checked first (api.auth), then the size.
    json_limit = {"max_body_size": JSON_BODY_LIMIT}
    app.include_router(health.public, **json_limit)
    app.include_router(health.router, dependencies=guarded, responses={**auth, **NOT_FOUND}, **json_limit)
    app.include_router(
        query.router, dependencies=guarded, responses={**auth, **GENERATING_RESPONSES, **NOT_FOUND}, **json_limit,
    )
    app.include_router(
        openai_compat.router, dependencies=guarded, responses={**auth, **GENERATING_RESPONSES, **NOT_FOUND},
        **json_limit,
    )
    app.include_router(collections.router, dependencies=guarded, responses={**auth, **COMMON_RESPONSES}, **json_limit)
    app.include_router(
        documents.router, dependencies=guarded, responses={**auth, **COMMON_RESPONSES, **NOT_FOUND},
        max_body_size=int(settings.api.max_upload_mb * MB) + MULTIPART_OVERHEAD,
    )
    app.include_router(
        metrics_router, dependencies=[] if settings.api.public_metrics else guarded, responses=auth, **json_limit,
    )
    _add_docs(app, settings, guarded)
    add_page(app)
    app.add_middleware(RequestGuard, body_timeout_s=settings.api.body_timeout_s)
    if settings.api.api_key:
        # Outside every route and guard: 401 before the body is read, parsed or waited for (api.auth).
        app.add_middleware(RequireApiKey, api_key=settings.api.api_key, public=_public_path(settings))
    if settings.api.cors_origins:
        # Outside the key check: a browser's preflight (OPTIONS) is answered before it, which it cannot pass
        # (browsers send no Authorization header on a preflight).
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.api.cors_origins, allow_methods=["*"], allow_headers=["*"],
            expose_headers=["Retry-After", REQUEST_ID_HEADER],
        )
    app.add_middleware(ObserveRequests, metrics=metrics)  # outermost: every response gets the request id

    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(GenerationTimeout, _timed_out)
    app.add_exception_handler(GeneratorUnavailable, _bad_gateway)
    app.add_exception_handler(IndexBusy, _index_busy)
    app.add_exception_handler(Exception, _unexpected)
    return app


def _public_path(settings: Settings) -> Callable[[str], bool]:
    """Which paths need no key: /healthz, the page and its files (the browser needs them before it can ask for
    the key), and /metrics when api.public_metrics. Every other path, unknown ones included, needs the key."""
    public = {"/healthz", "/"} | ({"/metrics"} if settings.api.public_metrics else set())
    return lambda path: path in public or path.startswith(STATIC_URL + "/")


def _add_docs(app: FastAPI, settings: Settings, guarded: list) -> None:
    """/openapi.json, /docs and /redoc behind the same key check as the API; the document states the limits that
    come from settings (question length, max_new_tokens ceiling), so a request valid by the schema is accepted."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_settings_limits(FastAPI.openapi(app), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    def openapi_json() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(  # scripts and styles from the package (api.routes.page): works offline
            openapi_url="/openapi.json", title=f"{app.title} - docs",
            swagger_js_url=SWAGGER_JS, swagger_css_url=SWAGGER_CSS, swagger_favicon_url=SWAGGER_FAVICON,
        )

    @app.get("/redoc", include_in_schema=False, dependencies=guarded)
    def redoc() -> HTMLResponse:
        return get_redoc_html(  # no Google Fonts either
            openapi_url="/openapi.json", title=f"{app.title} - ReDoc", redoc_js_url=REDOC_JS,
            redoc_favicon_url=SWAGGER_FAVICON, with_google_fonts=False,
        )


def _with_settings_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The generated OpenAPI document with maxLength/maximum from settings on the fields check_limits enforces,
    and the bearer security scheme only when a key is configured."""
    components = schema.get("components", {}).get("schemas", {})
    ceiling = settings.generation.max_new_tokens_limit

    def limit(model: str, field: str, key: str, value: int) -> None:
        prop = components.get(model, {}).get("properties", {}).get(field)
        if prop is None:
            return
        for option in prop.get("anyOf", [prop]):  # Optional fields: the non-null branch of anyOf
            if option.get("type") in ("integer", "string"):
                option[key] = value

    if not settings.api.api_key:  # no key, no check: the document must not ask clients for one
        schema.get("components", {}).pop("securitySchemes", None)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.pop("security", None)
    limit("QueryRequest", "question", "maxLength", settings.api.max_question_chars)
    limit("QueryRequest", "max_new_tokens", "maximum", ceiling)
    limit("ChatCompletionRequest", "max_tokens", "maximum", ceiling)
    limit("ChatCompletionRequest", "max_completion_tokens", "maximum", ceiling)
    return schema


def _error(request: Request, code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return error_response(request.url.path, code, detail, headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(request, status.HTTP_422_UNPROCESSABLE_CONTENT, jsonable_encoder(exc.errors()))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = exc.headers
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        # Starlette names only the methods of the first route on the path; GET and POST /v1/documents are two.
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return _error(request, exc.status_code, exc.detail, headers)


def _allowed_methods(request: Request) -> list[str]:
    allowed: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            allowed |= getattr(route, "methods", None) or set()
    return sorted(allowed)


async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    retry_after = max(1, math.ceil(exc.retry_after_s))  # whole seconds, as the header requires
    return _error(request, status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), {"Retry-After": str(retry_after)})


async def _timed_out(request: Request, exc: GenerationTimeout) -> JSONResponse:
    return _error(request, status.HTTP_504_GATEWAY_TIMEOUT, f"generation timed out: {exc}")


async def _bad_gateway(request: Request, exc: GeneratorUnavailable) -> JSONResponse:
    return _error(request, status.HTTP_502_BAD_GATEWAY, f"the generator failed: {exc}")


async def _index_busy(request: Request, exc: IndexBusy) -> JSONResponse:
    return _error(request, status.HTTP_409_CONFLICT, str(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    # This handler runs outside the middleware that adds the request id to responses: add it here.
    request_id = getattr(request.state, "request_id", None)
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return _error(request, status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error", headers)


def _queue_depth(app: FastAPI) -> float:
    """Generation requests waiting, for the metrics (0 while no generator runs)."""
    runtime = getattr(app.state, "runtime", None)
    batcher = getattr(runtime, "batcher", None)
    return float(batcher.waiting) if batcher is not None else 0.0
