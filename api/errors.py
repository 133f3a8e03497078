"""Error responses: one body shape for every error the service answers, wherever it is raised.

The exception handlers (``api.app``) and the middleware that answers before any route runs (``api.auth``) both
build their responses here, so a client sees the same ``{"detail": ...}`` (and, on the OpenAI-compatible routes,
OpenAI's ``error`` object) whoever refused it.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse

OPENAI_PREFIX = "/v1/chat/"  # routes whose errors also carry OpenAI's error object


def error_response(path: str, code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"detail": ...}`` as FastAPI writes it; under ``OPENAI_PREFIX`` also OpenAI's ``error`` object, whose
    ``message`` the official clients put in the exception they raise.

    ``detail`` is made renderable first: a validation error echoes the request's values back, and some cannot
    be written as JSON as they stand (lone surrogates; NaN and infinities, which Python's JSON parser accepts
    but its writer refuses). Left as they were, the response itself would fail and the client get a 500."""
    detail = encodable(detail)
    body: dict[str, Any] = {"detail": detail}
    if path.startswith(OPENAI_PREFIX):
        kind = "server_error" if code >= 500 else "authentication_error" if code == 401 else "invalid_request_error"
        body["error"] = {"message": _message(detail), "type": kind, "code": code}
    return JSONResponse(body, code, headers=headers)


def encodable(value: Any) -> Any:
    """``value`` with every string made UTF-8 encodable (a lone surrogate becomes its ``\\udXXX`` escape) and every
    non-finite float written as the token a client sent for it (``"NaN"``, ``"Infinity"``, ``"-Infinity"``)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {encodable(k): encodable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encodable(v) for v in value]
    return value


def _message(detail: Any) -> str:
    if isinstance(detail, list):  # validation errors: "field: what is wrong; ..."
        return "; ".join(_one_message(e) for e in detail if isinstance(e, dict))
    return str(detail)


def _one_message(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "body"
    if error.get("type") == "json_invalid":  # loc is ("body", character offset); the parser's reason is in ctx
        reason = (error.get("ctx") or {}).get("error")
        return f"body, character {where}: {error.get('msg')}" + (f": {reason}" if reason else "")
    return f"{where}: {error.get('msg')}"
