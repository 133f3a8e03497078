"""The web page at ``/`` and the static files behind it and behind /docs and /redoc, all shipped in the package.

Nothing is loaded from a CDN, so the page and the API docs work on an offline machine. The page and its
files are public (they hold no data; the browser needs them before it can ask for the key); every request
the page makes for data goes to the guarded API routes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"  # package data (pyproject.toml)
STATIC_URL = "/static"
# Vendored Swagger UI and ReDoc (api/static/vendor/VERSIONS.txt says which releases and how to update them).
SWAGGER_JS = f"{STATIC_URL}/vendor/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = f"{STATIC_URL}/vendor/swagger-ui/swagger-ui.css"
SWAGGER_FAVICON = f"{STATIC_URL}/vendor/swagger-ui/favicon-32x32.png"
REDOC_JS = f"{STATIC_URL}/vendor/redoc/redoc.standalone.js"
# The page changes with the package; a browser must not keep an old copy against a new API.
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    """The page: ask, read the answer and its sources, manage documents and collections."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=NO_CACHE)


def add_page(app: FastAPI) -> None:
    """``/`` and ``/static/...`` on ``app``, both public."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
