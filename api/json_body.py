"""JSON request bodies parsed as JSON, not as Python's superset of it.

Python's parser accepts ``NaN``, ``Infinity`` and ``-Infinity``, which JSON (RFC 8259) does not have. A value the
service then reads would fail validation anyway, but one in a field it ignores (a chat request's ``logit_bias``)
would pass, and every echo of it (a validation error, a log line) would have to write it back out. Routes built
with ``StandardJsonRoute`` refuse these tokens at the parse, with the 422 FastAPI gives any malformed JSON body
(``json_invalid``, its position in ``loc``, what is wrong in ``ctx.error``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

# A JSON string (skipped whole, so a "NaN" inside one never matches) or one of the non-standard constants.
_STRING_OR_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(NaN|-?Infinity)')


class _NonStandardConstant(ValueError):
    pass


def _refuse(name: str) -> Any:
    raise _NonStandardConstant(name)


def loads_standard(body: bytes) -> Any:
    """``json.loads(body)``, raising ``json.JSONDecodeError`` at a ``NaN``, ``Infinity`` or ``-Infinity`` token."""
    try:
        return json.loads(body, parse_constant=_refuse)
    except _NonStandardConstant as exc:
        text = body.decode(json.detect_encoding(body), "replace")
        # The parser got this far, so the text before the token is well-formed JSON: the first constant found
        # outside a string is the one it stopped at.
        found = next((m for m in _STRING_OR_CONSTANT.finditer(text) if m.group(1)), None)
        raise json.JSONDecodeError(
            f"{exc} is not a JSON number (JSON has no NaN or infinities): send a finite number, or null where the "
            "field allows it", text, found.start(1) if found else 0,
        ) from None


class StandardJsonRequest(Request):
    """A request whose ``json()`` is ``loads_standard``."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_standard(await self.body())
        return self._json


class StandardJsonRoute(APIRoute):
    """An ``APIRoute`` whose handler reads JSON bodies with ``loads_standard`` (FastAPI's documented way to
    change how a route reads its request: a custom ``Request`` class)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def standard_json_handler(request: Request) -> Response:
            return await handler(StandardJsonRequest(request.scope, request.receive))

        return standard_json_handler
