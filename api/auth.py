"""The API key check (``api.api_key``), made before anything reads the request's body.

FastAPI reads and parses a route's body before it solves the route's dependencies, so a key check that is only a
dependency comes second: a client without the key would get the parser's verdict on its body (400, 422 with
positions and messages), and could probe the schema and the parser. ``RequireApiKey`` is an ASGI middleware that
answers 401 from the headers alone, before routing, parsing or the body-size and body-timeout guards, on every
path but the public ones (``/healthz``, the page and its files, ``/metrics`` when ``api.public_metrics``).
The routes keep ``api.deps.require_api_key`` as a dependency too: it declares the bearer scheme in the OpenAPI
document, and checks again with the same rule.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from urllib.parse import unquote

from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response

# The web page (api/static) keeps the key in this cookie too, so that a plain link (a citation opening the PDF)
# is authorised. Read for GET/HEAD only: a cookie rides along on requests other sites trigger, so it must not
# authorise anything that changes state (the page is also SameSite=Strict about it).
API_KEY_COOKIE = "rag_api_key"
COOKIE_METHODS = frozenset({"GET", "HEAD"})
UNAUTHORIZED_DETAIL = "missing or wrong API key: send 'Authorization: Bearer <key>'"
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def presented_key(method: str, authorization: str | None, cookie: str | None) -> str:
    """The key a request presents: its bearer token; for a GET or HEAD without a bearer token, the
    ``rag_api_key`` cookie (percent-encoded, as the page sets it). "" when it presents none.

    A header that is not ``Bearer <token>`` counts as no bearer token, as for ``fastapi.security.HTTPBearer``."""
    scheme, token = get_authorization_scheme_param(authorization)
    if authorization and scheme.lower() == "bearer" and token:
        return token
    if method in COOKIE_METHODS:
        return unquote(cookie or "")
    return ""


def key_matches(expected: str, given: str) -> bool:
    """Constant-time comparison, so the time taken tells nothing about how much of the key was right."""
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class RequireApiKey:
    """ASGI middleware: 401 (with ``WWW-Authenticate: Bearer``) unless the request presents ``api_key``, for every
    HTTP request whose path ``public`` does not accept. Nothing of the request but its headers is read."""

    def __init__(self, app: ASGIApp, api_key: str, public: Callable[[str], bool]):
        if not api_key:
            raise ValueError("RequireApiKey needs a non-empty api_key (without one, do not add the middleware)")
        self.app = app
        self.api_key = api_key
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.public(scope["path"]):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        given = presented_key(
            scope["method"], connection.headers.get("authorization"), connection.cookies.get(API_KEY_COOKIE)
        )
        if key_matches(self.api_key, given):
            await self.app(scope, receive, send)
            return
        response = error_response(scope["path"], 401, UNAUTHORIZED_DETAIL, CHALLENGE)
        await response(scope, receive, send)
